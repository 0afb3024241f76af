"""C++/OpenMP ``index_put`` (with and without ``accumulate``) for the CPU target: the embedding backward.

The output starts as a copy of ``self``; then every position ``b`` of the broadcast index tensors
(in order) writes — or adds — its slice of ``values`` to the destination the indices name.
Deterministic without atomics: the destinations (the linear index over the indexed dims) are
partitioned among ``parts`` tasks, each task scans every position in order and handles only the
destinations it owns, so each element receives its contributions in position order on one
thread, as ATen's serial CPU loop adds them (the same sums, bit for bit; duplicate indices
included). The trailing dims are split into blocks too, so a few destinations still fill the
cores. Indices are bounds-checked (negative ones count from the end, as in ATen).
"""
from __future__ import annotations

import math

import torch

from ...errors import BuildError
from ...ir.graph import Node, Value
from ...ir.registry import packet_name
from ...schedule.space import Config, ScheduleSpace
from .copies import region_copy
from .indexing import (
    INDEX_DTYPES,
    SPACE_VERSION,
    IndexCheck,
    bits_type,
    check_code,
    index_ctype,
    operand_problem,
)
from .pointwise import broadcast_strides
from .scalar_ops import CPP_TYPES, load_code, storage_type, store_code

_ACCUMULATE = (torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
               torch.uint8)


def _parts(node: Node) -> tuple[Value, list[Value], Value, bool, int]:
    src, indices, values = node.args[0], list(node.args[1]), node.args[2]
    accumulate = bool(node.args[3] if len(node.args) > 3 else node.kwargs.get("accumulate", False))
    if not isinstance(src, Value) or not isinstance(values, Value):
        raise BuildError("index_put needs tensor self and values")
    used = [i for i, t in enumerate(indices) if t is not None]
    if not used or used != list(range(used[0], used[-1] + 1)):
        raise BuildError("index_put with non-consecutive indices is not generated")
    if any(not isinstance(indices[i], Value) or indices[i].type.dtype not in INDEX_DTYPES for i in used):
        raise BuildError("index_put with boolean or non-tensor indices is not generated")
    return src, [indices[i] for i in used], values, accumulate, used[0]


def supported_scatter(node: Node) -> str | None:
    """None when this module generates ``node`` (``aten.index_put``), else why not."""
    if packet_name(node.target) != "aten.index_put":
        return "not index_put"
    problem = operand_problem(node)
    if problem:
        return problem
    try:
        src, _, values, accumulate, _ = _parts(node)
        bits_type(src.type.dtype)
    except BuildError as exc:
        return str(exc)
    if values.type.dtype != src.type.dtype:
        return "values of another dtype"
    if accumulate and src.type.dtype not in _ACCUMULATE:
        return f"accumulating {src.type.dtype} is not generated"
    return None


def scatter_space(numel: int, destinations: int, cores: int) -> ScheduleSpace:
    """Threads, destination partitions per thread and the block of the trailing dims (one thread
    for small scatters, or when there are fewer destinations than cores)."""
    threads = sorted({1, *(t for t in (2, 4, 8, 16, 32, 64) if t <= cores), cores})
    default_threads = cores if numel >= 32768 and destinations >= cores else 1
    return ScheduleSpace("scatter", {"threads": threads, "parts_per_thread": [1, 2, 4], "BLOCK": [64, 256, 1024, 4096]},
                         default={"threads": default_threads, "parts_per_thread": 1, "BLOCK": 1024},
                         version=SPACE_VERSION)


class ScatterSource:
    """The C++ function of one ``index_put`` node (``name`` is its C symbol)."""

    def __init__(self, name: str, node: Node) -> None:
        reason = supported_scatter(node)
        if reason:
            raise BuildError(f"{node.op}: {reason}")
        src, indices, values, accumulate, first = _parts(node)
        out = node.outputs[0]
        self.name, self.nodes, self.outputs = name, [node], [out]
        self.inputs: list[Value] = []
        for v in [src, *indices, values]:
            if all(v.id != u.id for u in self.inputs):
                self.inputs.append(v)
        k = len(indices)
        self.bshape = tuple(torch.broadcast_shapes(*(t.type.shape for t in indices)))
        self.region = tuple(out.type.shape[:first]) + self.bshape + tuple(out.type.shape[first + k:])
        if math.prod(self.region) and values.type.rank > len(self.region):
            raise BuildError("index_put values have more dims than the indexed region")
        self.checks = [IndexCheck(t, out.type.shape[first + m], first + m, wrap=True) for m, t in enumerate(indices)]
        self.first, self.k, self.accumulate = first, k, accumulate
        self.destinations = math.prod(out.type.shape[first:first + k])
        self.numel = math.prod(self.region)
        itemsize = out.type.dtype.itemsize
        self.nbytes = 2 * out.type.numel * itemsize + self.numel * itemsize * (3 if accumulate else 2) + sum(
            t.type.numel * t.type.dtype.itemsize for t in indices)
        self.source = self._function(src, indices, values, out)

    def launch_args(self, config: Config) -> list[int]:
        """Scalar arguments after the tensors: block, threads and destination partitions."""
        threads = int(config["threads"])
        return [int(config["BLOCK"]), threads, max(1, threads * int(config["parts_per_thread"]))]

    def _in(self, v: Value) -> str:
        return f"in{next(i for i, u in enumerate(self.inputs) if u.id == v.id)}"

    def _function(self, src: Value, indices: list[Value], values: Value, out: Value) -> str:
        t = bits_type(out.type.dtype)
        params = [f"const void* p_in{i}" for i in range(len(self.inputs))] + ["void* p_out0"]
        casts = []
        for i, v in enumerate(self.inputs):
            ct = index_ctype(v.type.dtype) if any(v.id == x.id for x in indices) else t
            casts.append(f"  const {ct}* in{i} = (const {ct}*)p_in{i};")
        casts.append(f"  {t}* out = ({t}*)p_out0;")
        copy = region_copy("out", self._in(src), out.type.shape, out.type.strides, src.type.strides)
        first, k, nb = self.first, self.k, len(self.bshape)
        pre, suf = list(self.region[:first]), list(self.region[first + nb:])
        vstrides = broadcast_strides(values, self.region) if self.numel else [0] * len(self.region)
        ostr = out.type.strides
        lines = [f"  for (int64_t p0 = 0; p0 < INT64_C({math.prod(pre)}); ++p0) {{", "    int64_t rest = p0;"]
        pre_out, pre_val = [], []
        for d in range(len(pre) - 1, -1, -1):
            lines.append(f"    const int64_t a{d} = rest % {pre[d]}; rest /= {pre[d]};")
            pre_out.append(f"a{d} * INT64_C({ostr[d]})")
            pre_val.append(f"a{d} * INT64_C({vstrides[d]})")
        lines.append(f"    for (int64_t b = 0; b < INT64_C({math.prod(self.bshape)}); ++b) {{")
        lines.append("      int64_t brest = b;")
        bcoords = []
        order = position_order(self.bshape, [vstrides[first:first + nb]] +
                               [broadcast_strides(tv, self.bshape) for tv in indices])
        for d in reversed(order):  # the innermost position dim first
            lines.append(f"      const int64_t c{d} = brest % {self.bshape[d]}; brest /= {self.bshape[d]};")
            bcoords.append(f"c{d} * INT64_C({vstrides[first + d]})")
        dest, dest_off = [], []
        for m, (tv, check) in enumerate(zip(indices, self.checks)):
            istr = broadcast_strides(tv, self.bshape)
            off = " + ".join(f"c{d} * INT64_C({istr[d]})" for d in range(nb) if istr[d]) or "0"
            lines.append(f"      int64_t t{m} = (int64_t){self._in(tv)}[{off}];{check_code(f't{m}', check)}")
            lines.append(f"      if (!ok_t{m}) {{ status = 1; continue; }}")
            dest.append(f"t{m}")
            dest_off.append(f"t{m} * INT64_C({ostr[first + m]})")
        lin = dest[0]
        for m in range(1, k):
            lin = f"({lin}) * INT64_C({out.type.shape[first + m]}) + {dest[m]}"
        lines.append(f"      const int64_t dest = {lin};")
        lines.append("      if (dest < lo || dest >= hi) continue;")
        obase = " + ".join(pre_out + dest_off) or "0"
        vbase = " + ".join(pre_val + bcoords) or "0"
        lines.append(f"      {t}* o = out + {obase};")
        lines.append(f"      const {t}* v = {self._in(values)} + {vbase};")
        lines += self._suffix(suf, ostr[first + k:], vstrides[first + nb:], out.type.dtype)
        lines += ["    }", "  }"]
        body = "\n".join("      " + line for line in lines)
        return f"""extern "C" int64_t {self.name}({', '.join(params + ['int64_t block', 'int64_t threads', 'int64_t parts'])}) {{
{chr(10).join(casts)}
{copy}
  const int64_t length = INT64_C({suf[-1] if suf else 1});
  const int64_t blocks = (length + block - 1) / block;
  const int64_t destinations = INT64_C({self.destinations});
  int64_t status = 0;
  #pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(static) if(tw_nthreads(threads) > 1) reduction(|:status)
  for (int64_t task = 0; task < parts * blocks; ++task) {{
    const int64_t part = task / blocks;
    const int64_t j0 = (task % blocks) * block;
    const int64_t j1 = j0 + block < length ? j0 + block : length;
    const int64_t lo = destinations * part / parts, hi = destinations * (part + 1) / parts;
{body}
  }}
  return status;
}}
"""

    def _suffix(self, suf: list[int], ostr: list[int], vstr: list[int], dtype: torch.dtype) -> list[str]:
        """The loops over the trailing dims (the last one blocked, ``omp simd``)."""
        if not suf:
            suf, ostr, vstr = [1], [0], [0]
        lines, indent, o, v = [], "      ", [], []
        for d in range(len(suf) - 1):
            lines.append(f"{indent}for (int64_t s{d} = 0; s{d} < INT64_C({suf[d]}); ++s{d}) {{")
            indent += "  "
            o.append(f"s{d} * INT64_C({ostr[d]})")
            v.append(f"s{d} * INT64_C({vstr[d]})")
        o.append(f"j * INT64_C({ostr[-1]})")
        v.append(f"j * INT64_C({vstr[-1]})")
        target, value = f"o[{' + '.join(o)}]", f"v[{' + '.join(v)}]"
        if self.accumulate:
            ct, st = CPP_TYPES[dtype], storage_type(dtype)
            mem = f"(({st}*)o)[{' + '.join(o)}]"
            val = f"(({const_ptr(st)})v)[{' + '.join(v)}]"
            stmt = f"{mem} = {store_code(dtype, f'({ct})({load_code(dtype, mem)} + {load_code(dtype, val)})')};"
        else:
            stmt = f"{target} = {value};"
        lines.append(f"{indent}#pragma omp simd")
        lines.append(f"{indent}for (int64_t j = j0; j < j1; ++j) {stmt}")
        lines += ["      " + "  " * (len(suf) - 2 - d) + "}" for d in range(len(suf) - 1)]
        return lines


def position_order(shape: tuple[int, ...], strides: list[list[int]]) -> list[int]:
    """The index positions' dims from outermost to innermost, in the order ATen's CPU loop walks
    them (its iterator puts the dims with the smaller strides of the values, then of the indices,
    inside; broadcast dims decide nothing): contributions to one destination are then added in
    the same order, so the sums are equal bit for bit."""
    order = list(range(len(shape)))

    def inner_first(a: int, b: int) -> bool:  # should dim a run inside dim b?
        for operand in strides:
            sa, sb = operand[a], operand[b]
            if sa == 0 or sb == 0 or sa == sb:
                continue
            return sa < sb
        return False

    for i in range(1, len(order)):  # stable insertion sort, outermost first
        k = i
        while k > 0 and inner_first(order[k - 1], order[k]):
            order[k - 1], order[k] = order[k], order[k - 1]
            k -= 1
    return order


def const_ptr(ctype: str) -> str:
    """``const T*``."""
    return f"const {ctype}*"
