"""C++/OpenMP copies for the CPU target: ``cat``, ``slice_scatter``, ``select_scatter``, ``constant_pad_nd``.

Each op is a few strided region copies into its output (and a fill for padding): ``cat`` copies
each input into its slice of the output, ``slice_scatter``/``select_scatter`` copy the base and
then the scattered value into its (stepped) slice, ``constant_pad_nd`` fills the output and
copies the source into its interior (negative pads crop). A region copy walks its shape as rows
times blocks of the last dim, in parallel, with a unit-stride ``omp simd`` inner loop where the
operands allow; elements are copied as bits, so every dtype of 1 to 8 bytes works.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...errors import BuildError
from ...ir.graph import Node, Value
from ...ir.registry import packet_name, schema_argument
from ...schedule.space import Config
from .indexing import bits_type, operand_problem
from .scalar_ops import CPP_TYPES, literal, storage_type, store_code
from .sizes import SizeArgs

#: ops this module generates
COPY_OPS = ("aten.cat", "aten.slice_scatter", "aten.select_scatter", "aten.constant_pad_nd")


def coalesce(shape: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """``shape`` with adjacent dims merged where every operand walks them as one (fewer, longer rows)."""
    strides = [list(s) if len(s) == len(shape) else [0] * len(shape) for s in strides]
    d = len(shape) - 2
    while d >= 0:
        if all(s[d] == s[d + 1] * shape[d + 1] for s in strides) or shape[d] == 1:
            for s in strides:
                s[d] = s[d + 1]
                del s[d + 1]
            shape[d] *= shape[d + 1]
            del shape[d + 1]
        d -= 1
    return shape, strides


def region_copy(dst: str, src: str | None, shape: Sequence[int], dstrides: Sequence[int],
                sstrides: Sequence[int], fill: str = "0", sizes: SizeArgs | None = None, tag: str = "") -> str:
    """C++ copying ``src`` (or writing ``fill`` when None) into the region ``dst`` (pointer expressions).

    Runs inside the kernel function (``block`` and ``threads`` are its arguments). With ``sizes``,
    the region's sizes and strides are run-time sizes (labelled ``tag``...; a unit innermost
    stride stays in the code), else literals.
    """
    shape, (dstrides, sstrides) = coalesce(list(shape) or [1], [list(dstrides) or [0], list(sstrides) or [0]])
    if math.prod(shape) == 0:
        return "  // empty region\n"
    rank = len(shape)
    z = sizes if sizes is not None else SizeArgs(specialize=True)

    def stride(value: int, label: str, inner: bool = False) -> str:
        if inner and value in (0, 1):
            return z.fixed(value, f"{tag}{label}")
        return z.size(value, f"{tag}{label}")

    index = ["      int64_t rest = r;"]
    for d in range(rank - 2, -1, -1):
        size = z.size(shape[d], f"{tag}size{d}") if d else ""
        index.append(f"      const int64_t i{d} = rest % {size}; rest /= {size};" if d else
                     "      const int64_t i0 = rest; rest = 0;")  # the outermost needs no modulo
    index.append("      (void)rest;")

    def lin(strides: Sequence[int], name: str) -> str:
        return " + ".join(f"i{d} * {stride(strides[d], f'{name}.stride{d}')}" for d in range(rank - 1)
                          if strides[d]) or "0"

    value = f"{src}[sb + j * {stride(sstrides[-1], f'src.stride{rank - 1}', True)}]" if src is not None else fill
    src_base = f"      const int64_t sb = {lin(sstrides, 'src')};\n" if src is not None else ""
    dst_inner = stride(dstrides[-1], f"dst.stride{rank - 1}", True)
    return f"""  {{
    const int64_t length = {z.size(shape[-1], f"{tag}size{rank - 1}")};
    const int64_t blocks = (length + block - 1) / block;
    const int64_t tasks = {z.size(math.prod(shape[:-1]), f"{tag}rows")} * blocks;
    #pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(static) if(tw_nthreads(threads) > 1)
    for (int64_t task = 0; task < tasks; ++task) {{
      const int64_t r = blocks == 1 ? task : task / blocks;
      const int64_t j0 = blocks == 1 ? 0 : (task % blocks) * block;
      const int64_t j1 = j0 + block < length ? j0 + block : length;
{chr(10).join(index)}
{src_base}      const int64_t db = {lin(dstrides, 'dst')};
      #pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {dst}[db + j * {dst_inner}] = {value};
    }}
  }}
"""


def _dim(d: int, rank: int) -> int:
    return d + max(rank, 1) if d < 0 else d


def _arg(node: Node, name: str, default: object = None) -> object:
    return schema_argument(node.target, node.args, node.kwargs, name, default)


def supported_copy(node: Node) -> str | None:
    """None when this module generates ``node``, else why not."""
    name = packet_name(node.target)
    if name not in COPY_OPS:
        return "not a copy"
    problem = operand_problem(node)
    if problem:
        return problem
    out = node.outputs[0]
    if any(v.type.dtype != out.type.dtype for v in node.inputs):
        return "operands of different dtypes"
    try:
        bits_type(out.type.dtype)
    except BuildError as exc:
        return str(exc)
    if name == "aten.constant_pad_nd" and out.type.dtype not in CPP_TYPES:
        return f"padding {out.type.dtype} is not generated"
    if out.type.rank == 0:
        return "0-d output"
    return None


class CopySource:
    """The C++ function of one copy node (``name`` is its C symbol)."""

    def __init__(self, name: str, node: Node) -> None:
        self.checks: list = []  # no indices to check
        reason = supported_copy(node)
        if reason:
            raise BuildError(f"{node.op}: {reason}")
        self.name = name
        self.nodes = [node]
        self.inputs: list[Value] = node.inputs
        self.outputs = [node.outputs[0]]
        out = node.outputs[0]
        self.numel = out.type.numel
        self.nbytes = 2 * out.type.numel * out.type.dtype.itemsize
        self.t = bits_type(out.type.dtype)
        #: sizes and strides read at run time (cat; the other copies keep theirs in the code)
        self.sizes = SizeArgs()
        body = self._body(node, packet_name(node.target))
        params = [f"const void* p_in{i}" for i in range(len(self.inputs))] + ["void* p_out0"]
        casts = [f"  const {self.t}* in{i} = (const {self.t}*)p_in{i};" for i in range(len(self.inputs))]
        casts.append(f"  {self.t}* out = ({self.t}*)p_out0;")
        scalars = ["int64_t block", "int64_t threads", self.sizes.param]
        self.source = (f'extern "C" void {name}({", ".join(params + scalars)}) {{\n'
                       + "\n".join(casts) + "\n" + self.sizes.declarations() + "\n" + body + "}\n")

    def launch_args(self, config: Config) -> list[int]:
        """Scalar arguments after the tensors: the inner block size, the thread count, the sizes."""
        return [int(config["BLOCK"]), int(config["threads"]), self.sizes.address()]

    def _in(self, v: Value) -> str:
        return f"in{next(i for i, u in enumerate(self.inputs) if u.id == v.id)}"

    def _body(self, node: Node, name: str) -> str:
        out = self.outputs[0]
        ostrides, rank = list(out.type.strides), out.type.rank
        if name == "aten.cat":
            dim = _dim(int(_arg(node, "dim", 0)), rank)
            parts, offset, z = [], 0, self.sizes
            for v in node.args[0]:
                if v.type.rank == 1 and v.type.numel == 0 and rank != 1:
                    continue  # legacy empty 1-D operands are skipped by cat
                part = f"part{len(parts)}"  # an operand may appear twice (cat([x, x]))
                parts.append(region_copy(f"(out + {z.size(offset * ostrides[dim], f'{part}.offset')})", self._in(v),
                                         v.type.shape, ostrides, v.type.strides, sizes=z, tag=f"{part}."))
                offset += v.type.shape[dim]
            return "".join(parts)
        base = node.args[0]
        if name in ("aten.slice_scatter", "aten.select_scatter"):
            src = node.args[1]
            dim = _dim(int(_arg(node, "dim", 0)), rank)
            size = out.type.shape[dim]
            head = region_copy("out", self._in(base), out.type.shape, ostrides, base.type.strides)
            if name == "aten.select_scatter":
                index = int(_arg(node, "index"))
                index += size if index < 0 else 0
                dstrides = ostrides[:dim] + ostrides[dim + 1:]
                return head + region_copy(f"(out + INT64_C({index * ostrides[dim]}))", self._in(src),
                                          src.type.shape, dstrides, src.type.strides)
            start, step = _arg(node, "start"), int(_arg(node, "step", 1) or 1)
            start = 0 if start is None else int(start)
            start = min(max(start + size if start < 0 else start, 0), size)
            dstrides = list(ostrides)
            dstrides[dim] *= step
            return head + region_copy(f"(out + INT64_C({start * ostrides[dim]}))", self._in(src),
                                      src.type.shape, dstrides, src.type.strides)
        return self._pad(node, base)

    def _pad(self, node: Node, src: Value) -> str:
        out = self.outputs[0]
        pad = [int(p) for p in node.args[1]]
        value = _arg(node, "value", 0)
        dtype = out.type.dtype
        cvalue = value if dtype.is_floating_point else (bool(value) if dtype == torch.bool else int(value))
        typed = store_code(dtype, f"(({CPP_TYPES[dtype]}){literal(cvalue)})")
        # the fill's bits (float and double through memcpy)
        head = (f"  const {storage_type(dtype)} fill_value = {typed};\n"
                f"  {self.t} fill; std::memcpy(&fill, &fill_value, sizeof fill);\n")
        shape, dst_off, src_off = list(src.type.shape), 0, 0
        for k in range(len(pad) // 2):
            d = out.type.rank - 1 - k
            before = pad[2 * k]
            lo = max(0, -before)
            hi = min(src.type.shape[d], out.type.shape[d] - before)
            shape[d] = max(0, hi - lo)
            src_off += lo * src.type.strides[d]
            dst_off += (lo + before) * out.type.strides[d]
        body = head + region_copy("out", None, out.type.shape, out.type.strides, [], "fill")
        return body + region_copy(f"(out + INT64_C({dst_off}))", f"({self._in(src)} + INT64_C({src_off}))",
                                  shape, out.type.strides, src.type.strides)
