"""C++/OpenMP gathers for the CPU target: ``embedding``, ``index.Tensor``, ``gather``, ``index_select``.

Every gather is one kernel ``out[o] = src[f(o)]``: each dim of ``src`` is addressed either by a
dim of the output (a plain strided walk) or by the value of an index tensor read at the output
position (through the index tensor's own strides, 0 on broadcast dims). The output is walked as
rows (every dim but the last) times blocks of the last dim, like the pointwise kernels: index
values that do not change along the last dim are loaded and checked once per row, so an
embedding row is a unit-stride ``omp simd`` copy. Elements are copied as bits (no arithmetic),
so any dtype of 1, 2, 4 or 8 bytes works, bfloat16 and float16 included.

Indices are bounds-checked: an out-of-range index is never read through; the kernel returns a
status and the launch raises :class:`~tilewright.errors.KernelIndexError` naming the bad index
(the runtime then lets eager raise ATen's own error, as an uncompiled program would).
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...errors import BuildError, KernelIndexError
from ...ir.graph import Node, Value
from ...ir.registry import packet_name, schema_argument
from ...schedule.space import Config, ScheduleSpace
from .kernel import CpuKernel
from .sizes import SizeArgs

SPACE_VERSION = "1"
#: ops this module generates
GATHER_OPS = ("aten.embedding", "aten.index", "aten.gather", "aten.index_select")
INDEX_DTYPES = (torch.int64, torch.int32)
_BITS = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t", 8: "uint64_t"}


def bits_type(dtype: torch.dtype) -> str:
    """The unsigned C++ type elements of ``dtype`` are copied as (raises for complex/odd sizes)."""
    if dtype.is_complex or dtype.itemsize not in _BITS:
        raise BuildError(f"{dtype} is not copied by CPU kernels")
    return _BITS[dtype.itemsize]


def index_ctype(dtype: torch.dtype) -> str:
    """The C++ type of an index tensor's elements."""
    if dtype not in INDEX_DTYPES:
        raise BuildError(f"{dtype} indices are not generated (int64 and int32 are)")
    return "int64_t" if dtype == torch.int64 else "int32_t"


def operand_problem(node: Node) -> str | None:
    """Why a node of this module's kinds is not generated (device, empty output), or None."""
    for v in node.inputs + node.outputs:
        if v.type.device.type != "cpu":
            return f"operand on {v.type.device}"
        if v.type.dtype.is_complex:
            return f"{v.type.dtype} is not generated for CPU"
    if not node.outputs or any(o.type.numel == 0 for o in node.outputs):
        return "empty output"
    return None


def cpu_space(kind: str, numel: int, cores: int, block: bool = True) -> ScheduleSpace:
    """Threads (and the inner block size) of an indexing kernel; every core once the work is large."""
    threads = sorted({1, *(t for t in (2, 4, 8, 16, 32, 64) if t <= cores), cores})
    params: dict[str, list[Any]] = {"threads": threads}
    default: dict[str, Any] = {"threads": cores if numel >= 32768 else 1}
    if block:
        params["BLOCK"] = [256, 1024, 4096, 16384]
        default["BLOCK"] = 4096
    return ScheduleSpace(kind, params, default=default, version=SPACE_VERSION)


@dataclasses.dataclass
class IndexCheck:
    """An index tensor the kernel bounds-checks: ``value`` addresses a dim of size ``size``."""

    value: Value
    size: int
    dim: int
    #: negative indices count from the end (advanced indexing, index_put), else they are errors
    wrap: bool


def raise_index_error(checks: list[IndexCheck], tensors: dict[int, torch.Tensor]) -> None:
    """Raise the error naming the first out-of-range index (the kernel saw one)."""
    for check in checks:
        t = tensors[check.value.id].reshape(-1).to(torch.int64)
        low = -check.size if check.wrap else 0
        bad = t[(t < low) | (t >= check.size)]
        if bad.numel():
            raise KernelIndexError(f"index {int(bad[0])} is out of bounds for dimension {check.dim} "
                                   f"with size {check.size}")
    raise KernelIndexError("an index is out of bounds")


def check_code(var: str, check: IndexCheck, size: str | None = None) -> str:
    """C++ turning index ``var`` (int64) into its wrapped value and ``ok_<var>`` (in range);
    ``size``: the bound as C++ (default: its literal)."""
    size = size or f"INT64_C({check.size})"
    wrap = f" {var} += {var} < 0 ? {size} : 0;" if check.wrap else ""
    return f"{wrap} const bool ok_{var} = (uint64_t){var} < (uint64_t){size};"


class CheckedKernel(CpuKernel):
    """A CPU kernel whose C function returns a status: nonzero when an index was out of range."""

    #: whether the C function returns the status (copies and pooling forwards return nothing)
    returns_status = True

    def __init__(self, source: Any, kind: str, space: ScheduleSpace, numel: int, nbytes: float) -> None:
        super().__init__(source, kind, space, numel)
        # the bytes the kernel really moves (a gather reads rows of its table, not all of it)
        self.problem = dataclasses.replace(self.problem, bytes=float(nbytes),
                                           meta={**self.problem.meta, "op": kind})

    def bind(self, library: Any) -> None:
        """Take this kernel's function from its graph's library (it returns an int64 status)."""
        super().bind(library)
        if self.returns_status:
            self.function.restype = ctypes.c_int64

    def pointer_launcher(self) -> Any:
        """No bare C call for a runtime fast path when the status must be read: it goes through launch."""
        return None if self.returns_status else getattr(super(), "pointer_launcher", lambda: None)()

    def launch(self, tensors: Sequence[torch.Tensor], config: Config | None = None) -> None:
        """Call the C function; raise :class:`KernelIndexError` when it met an out-of-range index."""
        if self.function is None:
            raise BuildError(f"kernel {self.name} has no compiled library (the build failed or never ran)")
        status = self.function(*[t.data_ptr() for t in tensors], *self.source.launch_args(config or self.config))
        if self.returns_status and status:
            raise_index_error(self.source.checks, {v.id: t for v, t in zip(self.inputs, tensors)})


def _dim(d: int, rank: int) -> int:
    return d + max(rank, 1) if d < 0 else d


@dataclasses.dataclass
class GatherSpec:
    """``out[o] = src[...]``: per src dim, ``("out", k)`` (output dim k) or ``("idx", j)`` (index j)."""

    src: Value
    coords: list[tuple[str, int]]
    #: index tensors with their strides over the output's dims (0 where they do not vary)
    indices: list[tuple[IndexCheck, list[int]]]


def _broadcast_onto(v: Value, shape: Sequence[int], at: int, rank: int) -> list[int]:
    """Strides of index ``v`` over an output of rank ``rank`` whose dims ``at..`` hold ``shape``."""
    strides = [0] * rank
    lead = len(shape) - v.type.rank
    for d in range(v.type.rank):
        if v.type.shape[d] != 1:
            strides[at + lead + d] = v.type.strides[d]
    return strides


def gather_spec(node: Node) -> GatherSpec:
    """How ``node`` (one of :data:`GATHER_OPS`) addresses its source; raises BuildError otherwise."""
    name = packet_name(node.target)
    out = node.outputs[0]
    rank = out.type.rank
    src = node.args[0]
    if not isinstance(src, Value):
        raise BuildError(f"{name} of a non-tensor")
    if name == "aten.embedding":
        weight, idx = node.args[0], node.args[1]
        if weight.type.rank != 2 or not isinstance(idx, Value):
            raise BuildError("embedding needs a 2-D weight and an index tensor")
        check = IndexCheck(idx, weight.type.shape[0], 0, wrap=False)
        return GatherSpec(weight, [("idx", 0), ("out", rank - 1)], [(check, list(idx.type.strides) + [0])])
    if name in ("aten.gather", "aten.index_select"):
        dim = _dim(int(schema_argument(node.target, node.args, node.kwargs, "dim")), src.type.rank)
        idx = schema_argument(node.target, node.args, node.kwargs, "index")
        if src.type.rank == 0 or not isinstance(idx, Value) or rank != src.type.rank:
            raise BuildError(f"{name} of a 0-d tensor")
        check = IndexCheck(idx, src.type.shape[dim], dim, wrap=False)
        if name == "aten.gather":
            strides = list(idx.type.strides)
        else:
            strides = [0] * rank
            strides[dim] = idx.type.strides[0] if idx.type.rank else 0
        coords = [("idx", 0) if d == dim else ("out", d) for d in range(rank)]
        return GatherSpec(src, coords, [(check, strides)])
    return _advanced_index_spec(node, src, rank)


def _advanced_index_spec(node: Node, src: Value, rank: int) -> GatherSpec:
    """``index.Tensor``: integer index tensors at some dims (None elsewhere)."""
    indices = list(node.args[1])
    used = [d for d, t in enumerate(indices) if t is not None]
    if not used or any(not isinstance(indices[d], Value) or indices[d].type.dtype not in INDEX_DTYPES
                       for d in used):
        raise BuildError("index with boolean or non-tensor indices is not generated")
    bshape = tuple(torch.broadcast_shapes(*(indices[d].type.shape for d in used)))
    consecutive = used == list(range(used[0], used[-1] + 1))
    at = used[0] if consecutive else 0
    rest = [d for d in range(src.type.rank) if d not in used]
    coords: list[tuple[str, int]] = []
    checks: list[tuple[IndexCheck, list[int]]] = []
    for d in range(src.type.rank):
        if d in used:
            t = indices[d]
            coords.append(("idx", len(checks)))
            checks.append((IndexCheck(t, src.type.shape[d], d, wrap=True), _broadcast_onto(t, bshape, at, rank)))
        else:
            k = rest.index(d)
            pos = k if (consecutive and d < at) else k + len(bshape)
            coords.append(("out", pos))
    if rank != len(rest) + len(bshape):
        raise BuildError("index output rank does not match its indices")
    return GatherSpec(src, coords, checks)


def supported_gather(node: Node) -> str | None:
    """None when this module generates ``node``, else why not."""
    if packet_name(node.target) not in GATHER_OPS:
        return "not a gather"
    problem = operand_problem(node)
    if problem:
        return problem
    if node.outputs[0].type.rank == 0:
        return "0-d output"
    try:
        spec = gather_spec(node)
        bits_type(spec.src.type.dtype)
        for check, _ in spec.indices:
            index_ctype(check.value.type.dtype)
    except BuildError as exc:
        return str(exc)
    return None


class GatherSource:
    """The C++ function of one gather node (``name`` is its C symbol)."""

    def __init__(self, name: str, node: Node) -> None:
        reason = supported_gather(node)
        if reason:
            raise BuildError(f"{node.op}: {reason}")
        self.name = name
        self.nodes = [node]
        spec = gather_spec(node)
        out = node.outputs[0]
        self.inputs: list[Value] = [spec.src]
        for check, _ in spec.indices:
            if all(check.value.id != v.id for v in self.inputs):
                self.inputs.append(check.value)
        self.outputs = [out]
        self.checks = [c for c, _ in spec.indices]
        self.spec = spec
        self.shape = tuple(out.type.shape)
        self.rows = math.prod(self.shape[:-1])
        #: sizes and strides read at run time (see :mod:`.sizes`)
        self.sizes = SizeArgs()
        self.nbytes = out.type.numel * out.type.dtype.itemsize * 2 + sum(
            c.value.type.numel * c.value.type.dtype.itemsize for c in self.checks)
        self.source = self._function()

    def launch_args(self, config: Config) -> list[int]:
        """Scalar arguments after the tensors: the inner block size, the thread count, the sizes."""
        return [int(config["BLOCK"]), int(config["threads"]), self.sizes.address()]

    def _inner_loop(self, varying: list[Any], store: str, inner_src: str,
                    st: Callable[..., str]) -> tuple[list[str], str]:
        """The innermost loop's body and its SIMD pragma: a plain copy, or per-element index loads
        (bounds-checked; a bad index sets the status) when an index varies along the last dim."""
        z, last = self.sizes, len(self.shape) - 1
        if not varying:
            return [f"      {store} = src[sb + {inner_src}];"], "#pragma omp simd"
        inner, offs = [], [f"sb + {inner_src}"]
        for k, check, strides, sd in varying:
            inner.append(f"      int64_t t{k} = (int64_t)x{k}[xb{k} + j * {st(strides[last], f'x{k}.stride{last}', True)}];"
                         f"{check_code(f't{k}', check, z.size(check.size, f'x{k}.bound'))}")
            inner.append(f"      bad |= !ok_t{k}; t{k} = ok_t{k} ? t{k} : 0;")
            offs.append(f"t{k} * {z.size(sd, f'src.index{k}.stride')}")
        inner.append(f"      {store} = src[{' + '.join(offs)}];")
        return inner, "#pragma omp simd reduction(|:bad)"

    def _function(self) -> str:
        spec, out, z = self.spec, self.outputs[0], self.sizes

        def st(value: int, label: str, inner: bool = False) -> str:
            """A stride: a unit or zero innermost one in the code, the rest run-time sizes."""
            return z.fixed(value, label) if inner and value in (0, 1) else z.size(value, label)

        rank, last = len(self.shape), len(self.shape) - 1
        t = bits_type(out.type.dtype)
        params = [f"const void* p_in{i}" for i in range(len(self.inputs))] + ["void* p_out0"]
        casts = [f"  const {t}* src = (const {t}*)p_in0;", f"  {t}* out = ({t}*)p_out0;"]
        names = {}
        for k, (check, _) in enumerate(spec.indices):
            pos = next(i for i, v in enumerate(self.inputs) if v.id == check.value.id)
            it = index_ctype(check.value.type.dtype)
            names[k] = f"x{k}"
            casts.append(f"  const {it}* x{k} = (const {it}*)p_in{pos};")
        row = ["    int64_t rest = r;"]
        for d in range(rank - 2, -1, -1):
            row.append(f"    const int64_t i{d} = rest % {z.size(self.shape[d], f'size{d}')}; "
                       f"rest /= {z.size(self.shape[d], f'size{d}')};" if d else
                       "    const int64_t i0 = rest; rest = 0;")  # the outermost needs no modulo
        row.append("    (void)rest;")

        def lin(strides: Sequence[int], name: str) -> str:
            terms = [f"i{d} * {st(strides[d], f'{name}.stride{d}')}" for d in range(rank - 1) if strides[d]]
            return " + ".join(terms) or "0"

        sstrides = spec.src.type.strides
        src_terms = [lin([0] * rank, "src")]
        inner_src = "0"
        for d, (how, k) in enumerate(spec.coords):
            if how == "out":
                stride_over_out = [0] * rank
                stride_over_out[k] = sstrides[d]
                src_terms.append(lin(stride_over_out, f"src{d}"))
                if k == last and sstrides[d]:
                    inner_src = f"j * {st(sstrides[d], f'src.stride{d}', True)}"
        row.append(f"    int64_t sb = {' + '.join(src_terms)};")
        row.append(f"    const int64_t ob = {lin(out.type.strides, 'out')};")
        varying = []
        for k, (check, strides) in enumerate(spec.indices):
            sd = sstrides[spec.coords.index(("idx", k))]
            if strides[last]:
                varying.append((k, check, strides, sd))
                row.append(f"    const int64_t xb{k} = {lin(strides, f'x{k}')};")
                continue
            bound = z.size(check.size, f"x{k}.bound")
            row.append(f"    int64_t t{k} = (int64_t)x{k}[{lin(strides, f'x{k}')}];{check_code(f't{k}', check, bound)}")
            row.append(f"    if (!ok_t{k}) {{ status = 1; continue; }}")
            row.append(f"    sb += t{k} * {z.size(sd, f'src.index{k}.stride')};")
        store = f"out[ob + j * {st(out.type.strides[last], f'out.stride{last}', True)}]"
        inner, pragma = self._inner_loop(varying, store, inner_src, st)
        length, rows = z.size(self.shape[last], f"size{last}"), z.size(self.rows, "rows")
        return f"""extern "C" int64_t {self.name}({', '.join(params + ['int64_t block', 'int64_t threads', z.param])}) {{
{chr(10).join(casts)}
{z.declarations()}
  const int64_t length = {length};
  const int64_t blocks = (length + block - 1) / block;
  const int64_t tasks = {rows} * blocks;
  int64_t status = 0;
  #pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(static) if(tw_nthreads(threads) > 1) reduction(|:status)
  for (int64_t task = 0; task < tasks; ++task) {{
    const int64_t r = blocks == 1 ? task : task / blocks;
    const int64_t j0 = blocks == 1 ? 0 : (task % blocks) * block;
    const int64_t j1 = j0 + block < length ? j0 + block : length;
{chr(10).join(row)}
    int bad = 0;
    {pragma}
    for (int64_t j = j0; j < j1; ++j) {{
{chr(10).join(inner)}
    }}
    status |= bad;
  }}
  return status;
}}
"""
