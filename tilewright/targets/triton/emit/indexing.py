"""Symbolic index expressions for generated kernels, with the cancellations that matter.

A value inside a fused kernel is computed *at a multi-index*: a tuple of :class:`Atom`s, one
per dimension. Views become index transforms (permute reorders atoms, expand zeroes them,
reshape linearises and splits them), so chains of views fuse without copies. Two rules keep
the expressions small and comparable: ``Digit(Lin(xs, S), S, k) == xs[k]`` and
``Lin([Digit(v, S, k) for k], S) == v``. Sizes of 1 are dropped, so a keepdim row index and
its broadcast compare equal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


class Atom:
    """Base class of index atoms (immutable, hashable)."""

    def code(self) -> str:  # pragma: no cover - abstract
        """Triton expression of this atom."""
        raise NotImplementedError

    def vars(self) -> frozenset[str]:  # pragma: no cover - abstract
        """Names of kernel index variables the atom depends on."""
        raise NotImplementedError


@dataclass(frozen=True)
class Var(Atom):
    """A kernel index variable (``xindex``, ``rindex``, ``rm`` ...)."""

    name: str

    def code(self) -> str:
        return self.name

    def vars(self) -> frozenset[str]:
        return frozenset([self.name])


@dataclass(frozen=True)
class Const(Atom):
    """A constant index."""

    value: int

    def code(self) -> str:
        return str(self.value)

    def vars(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class Dyn(Atom):
    """An index loaded from a tensor (gathers); ``expr`` is a kernel variable name."""

    expr: str
    deps: frozenset[str]

    def code(self) -> str:
        return self.expr

    def vars(self) -> frozenset[str]:
        return self.deps


@dataclass(frozen=True)
class Affine(Atom):
    """``base * mul + add``."""

    base: Atom
    mul: int
    add: int

    def code(self) -> str:
        text = self.base.code()
        if self.mul != 1:
            text = f"({text}) * {self.mul}"
        if self.add:
            text = f"({text} + {self.add})"
        return text

    def vars(self) -> frozenset[str]:
        return self.base.vars()


@dataclass(frozen=True)
class Lin(Atom):
    """Row-major linear index of ``atoms`` over ``sizes``."""

    atoms: tuple[Atom, ...]
    sizes: tuple[int, ...]

    def code(self) -> str:
        terms = []
        for i, atom in enumerate(self.atoms):
            stride = math.prod(self.sizes[i + 1:])
            terms.append(atom.code() if stride == 1 else f"({atom.code()}) * {stride}")
        return "(" + " + ".join(terms) + ")"

    def vars(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for a in self.atoms:
            out |= a.vars()
        return out


@dataclass(frozen=True)
class Digit(Atom):
    """The ``k``-th mixed-radix digit of the linear index ``base`` over ``sizes``."""

    base: Atom
    sizes: tuple[int, ...]
    k: int

    def code(self) -> str:
        below = math.prod(self.sizes[self.k + 1:])
        text = self.base.code()
        if below != 1:
            text = f"({text} // {below})"
        if self.k != 0:
            text = f"({text} % {self.sizes[self.k]})"
        return text

    def vars(self) -> frozenset[str]:
        return self.base.vars()


def lin(atoms: Sequence[Atom], sizes: Sequence[int]) -> Atom:
    """Simplifying constructor of :class:`Lin`."""
    pairs = [(a, s) for a, s in zip(atoms, sizes) if s != 1]
    if not pairs:
        return Const(0)
    atoms_t = tuple(a for a, _ in pairs)
    sizes_t = tuple(s for _, s in pairs)
    if len(atoms_t) == 1:
        return atoms_t[0]
    first = atoms_t[0]
    if isinstance(first, Digit) and first.sizes == sizes_t and all(
            isinstance(a, Digit) and a.base == first.base and a.sizes == sizes_t and a.k == i
            for i, a in enumerate(atoms_t)):
        return first.base
    if all(isinstance(a, Const) for a in atoms_t):
        value = 0
        for a, s in zip(atoms_t, sizes_t):
            value = value * s + a.value  # type: ignore[attr-defined]
        return Const(value)
    return Lin(atoms_t, sizes_t)


def digits(base: Atom, sizes: Sequence[int]) -> tuple[Atom, ...]:
    """The per-dimension atoms of linear index ``base`` over ``sizes`` (size-1 dims -> 0)."""
    nz = tuple(s for s in sizes if s != 1)
    out: list[Atom] = []
    k = 0
    for s in sizes:
        if s == 1:
            out.append(Const(0))
            continue
        out.append(_digit(base, nz, k))
        k += 1
    return tuple(out)


def _digit(base: Atom, sizes: tuple[int, ...], k: int) -> Atom:
    if len(sizes) == 1:
        return base
    if isinstance(base, Lin) and base.sizes == sizes:
        return base.atoms[k]
    if isinstance(base, Const):
        return Const((base.value // math.prod(sizes[k + 1:])) % sizes[k])
    return Digit(base, sizes, k)


def reshape_index(out_idx: Sequence[Atom], out_shape: Sequence[int], in_shape: Sequence[int]) -> tuple[Atom, ...]:
    """Map a multi-index of a reshaped tensor back to the multi-index of its source.

    Dimensions are matched in groups of equal product (like torch's view rules) so that an
    unchanged trailing dim passes its atom through untouched.
    """
    out_shape = list(out_shape)
    in_shape = list(in_shape)
    if math.prod(out_shape) != math.prod(in_shape):
        raise ValueError(f"reshape {in_shape} -> {out_shape} changes the number of elements")
    out_nz = [(i, s) for i, s in enumerate(out_shape) if s != 1]
    in_nz = [(i, s) for i, s in enumerate(in_shape) if s != 1]
    result: list[Atom] = [Const(0)] * len(in_shape)
    oi = ii = 0
    while oi < len(out_nz) or ii < len(in_nz):
        o_group = [out_nz[oi]] if oi < len(out_nz) else []
        i_group = [in_nz[ii]] if ii < len(in_nz) else []
        oi += 1
        ii += 1
        po = math.prod(s for _, s in o_group)
        pi = math.prod(s for _, s in i_group)
        while po != pi:
            if po < pi:
                o_group.append(out_nz[oi])
                po *= out_nz[oi][1]
                oi += 1
            else:
                i_group.append(in_nz[ii])
                pi *= in_nz[ii][1]
                ii += 1
        linear = lin([out_idx[i] for i, _ in o_group], [s for _, s in o_group])
        for (dim, _), atom in zip(i_group, digits(linear, [s for _, s in i_group])):
            result[dim] = atom
    return tuple(result)


def broadcast_index(idx: Sequence[Atom], out_shape: Sequence[int], in_shape: Sequence[int]) -> tuple[Atom, ...]:
    """Index of a broadcast operand of shape ``in_shape`` inside a result of ``out_shape``."""
    lead = len(out_shape) - len(in_shape)
    if lead < 0:
        raise ValueError(f"cannot broadcast {list(in_shape)} to {list(out_shape)}")
    out: list[Atom] = []
    for d, size in enumerate(in_shape):
        out.append(Const(0) if size == 1 else idx[lead + d])
    return tuple(out)


def depends(idx: Sequence[Atom]) -> frozenset[str]:
    """All kernel variables a multi-index depends on."""
    out: frozenset[str] = frozenset()
    for a in idx:
        out |= a.vars()
    return out


def offset_code(idx: Sequence[Atom], strides: Sequence[int], base_offset: int = 0) -> str:
    """Element offset ``sum(idx[d] * strides[d])`` as Triton code."""
    terms = [str(base_offset)] if base_offset else []
    for atom, stride in zip(idx, strides):
        if isinstance(atom, Const):
            if atom.value and stride:
                terms.append(str(atom.value * stride))
            continue
        if stride == 0:
            continue
        terms.append(atom.code() if stride == 1 else f"({atom.code()}) * {stride}")
    return " + ".join(terms) if terms else "0"
