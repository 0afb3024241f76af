"""Sizes and strides a generated CPU kernel reads at run time instead of having them in its source.

A kernel generated for one concrete problem would normally write its sizes and strides into the
C++ text as literals; then every new batch size or sequence length makes a new source, a new
shared library and a compiler run (seconds). Kernels instead ask a :class:`SizeArgs` for each
size: it hands back the name of a local read from one ``int64`` array (the kernel's last scalar
argument: the array's address), so sources of the same graph at other sizes are byte-identical
and the library comes from the build cache. What the code really depends on stays in the text
and is recorded as specialised: ranks, dtypes, which operands broadcast along which dims, whether
the innermost stride is 0, 1 or something else (unit stride is what the vector loops need),
size classes that pick a code form (a row short enough for a scratch buffer).

``TILEWRIGHT_CPU_SIZES=specialize`` writes every size into the source as before (the library is
then rebuilt for each new size); it serves as the baseline the run-time form is measured against.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field


def specialize_all() -> bool:
    """Whether sizes are written into kernel sources (``TILEWRIGHT_CPU_SIZES=specialize``)."""
    return os.environ.get("TILEWRIGHT_CPU_SIZES", "runtime").strip().lower() in ("specialize", "specialise",
                                                                                   "static", "0")


@dataclass
class SizeArgs:
    """The run-time sizes of one kernel: C++ names for them, their values, and what was specialised.

    ``size(value, label)`` returns the C++ expression a kernel writes for a size (a local
    ``tw_zN`` read from the size array, or a literal when every size is specialised); sizes
    with the same label share one slot. ``fixed(value, label)`` records a size the code is
    specialised to on purpose and returns its literal.
    """

    specialize: bool = field(default_factory=specialize_all)
    values: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    #: labels (with values) of sizes written into the source
    specialised: dict[str, int] = field(default_factory=dict)
    _slots: dict[str, int] = field(default_factory=dict)
    _array: object = None

    def size(self, value: int, label: str) -> str:
        """The C++ expression of size ``value`` (named ``label`` in explain)."""
        value = int(value)
        if self.specialize:
            self.specialised[label] = value
            return f"INT64_C({value})"
        slot = self._slots.get(label)
        if slot is None:
            slot = self._slots[label] = len(self.values)
            self.values.append(value)
            self.labels.append(label)
        elif self.values[slot] != value:
            raise ValueError(f"size {label} given two values ({self.values[slot]} and {value})")
        return f"tw_z{slot}"

    def fixed(self, value: int, label: str) -> str:
        """The literal of a size the code is specialised to (recorded for explain)."""
        self.specialised[label] = int(value)
        return f"INT64_C({int(value)})"

    @property
    def param(self) -> str:
        """The C parameter carrying the size array's address (the last scalar argument)."""
        return "int64_t tw_sizes"

    def declarations(self, indent: str = "  ") -> str:
        """C++ lines binding each run-time size to its local (``const int64_t tw_zN``)."""
        if not self.values:
            return f"{indent}(void)tw_sizes;"
        lines = [f"{indent}const int64_t* tw_sz = (const int64_t*)(intptr_t)tw_sizes;"]
        lines += [f"{indent}const int64_t tw_z{i} = tw_sz[{i}];  // {label}" for i, label in enumerate(self.labels)]
        return "\n".join(lines)

    def address(self) -> int:
        """The address of the size array (made once; kept alive by this object), 0 when empty."""
        if not self.values:
            return 0
        if self._array is None:
            self._array = (ctypes.c_int64 * len(self.values))(*self.values)
        return ctypes.addressof(self._array)  # type: ignore[arg-type]

    def explain(self) -> dict[str, dict[str, int]]:
        """``{"specialised": {label: value}, "runtime": {label: value}}`` for the explain report."""
        return {"specialised": dict(self.specialised), "runtime": dict(zip(self.labels, self.values))}
