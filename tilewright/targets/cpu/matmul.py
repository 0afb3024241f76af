"""Matmul groups on the CPU target: mm / bmm with their fused pointwise epilogue, as one C++ kernel.

The GEMM itself is the blocked, packed, register-tiled core of :mod:`.gemm_micro`; this module
generates, per group, the C function that calls it with the operands' strides and an epilogue
lambda. The epilogue receives each finished row segment of C (``crow[j - j0]`` for output row
``i`` of batch ``b``) while it is in cache and evaluates the group's pointwise nodes on it with
the same C++ bodies and helpers as pointwise kernels (:class:`~.pointwise.PointwiseSource`):
the matmul result (or a row-major reshape of it, e.g. ``[B*T, N] -> [B, T, N]``) is the value
``vacc``, other operands are read through broadcast strides, and only materialized values are
stored. Operands are read through their strides (transposed weights and strided views cost no
copies); bfloat16 operands are converted to float while packing, accumulate in float and the
result is rounded to bfloat16 as eager's is; float64 runs the same code in double.

The schedule space (:func:`~.gemm_micro.gemm_space`) includes an ``extern`` candidate: torch.mm /
torch.bmm into a scratch tensor, then the same generated epilogue over it (still one kernel from
the graph's point of view). It runs when a tuning record or the compile-time race
(:meth:`~.kernel.CpuKernel.race_candidates`) chose it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from ...errors import BuildError
from ...ir.graph import Node, Value
from ...ir.registry import lookup, packet_name
from ...schedule.group import Group
from ...schedule.space import Config
from .gemm_micro import core_alternative, core_source, gemm_space
from .kernel import CpuKernel
from .pointwise import PointwiseSource, broadcast_strides, follows_dims, supported_node
from .scalar_ops import CPP_TYPES, result_code, storage_type, store_code
from .sizes import SizeArgs

_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
_ORDER = {"mn": 0, "nm": 1}


def supported_matmul(node: Node) -> str | None:
    """None when this module generates the matmul ``node`` (mm or bmm), else why not."""
    name = packet_name(node.target)
    if name not in ("aten.mm", "aten.bmm"):
        return f"no C++ template for {name}"
    a, b = node.args[0], node.args[1]
    if not isinstance(a, Value) or not isinstance(b, Value):
        return "matmul operands must be tensors"
    out = node.outputs[0]
    if a.type.dtype != b.type.dtype or a.type.dtype not in _DTYPES or out.type.dtype != a.type.dtype:
        return f"matmul of {a.type.dtype} x {b.type.dtype} is not generated for CPU"
    if any(v.type.device.type != "cpu" for v in (a, b, out)):
        return "operand not on the CPU"
    if out.type.numel == 0 or a.type.shape[-1] == 0:
        return "empty matmul"
    return None


def _contiguous(t: torch.Size | tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Row-major dense (strides of size-1 dims ignored)."""
    expected = 1
    for size, stride in zip(reversed(tuple(t)), reversed(strides)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _view_source(v: Value) -> Value | None:
    """The non-view value ``v`` is a view of (None when ``v`` is not a view)."""
    node, src = v.producer, None
    while node is not None and lookup(node.target).kind == "view" and isinstance(node.args[0], Value):
        src = node.args[0]
        node = src.producer
    return src


class _Epilogue(PointwiseSource):
    """The pointwise part of a matmul group as a loop body over one row of C (reuses the
    pointwise kernel's operand and body generation; ``vacc`` is the matmul's value).

    Every value of the epilogue is rows of the matmul's ``N`` columns in some shape (its
    *frame*: ``[M, N]``, ``[B, T, N]``...); operands and stored values are indexed through their
    own frame's row index, and values read through a row-major reshape of a group value alias it.
    """

    def __init__(self, nodes: list[Node], inputs: list[Value], outputs: list[Value], frames: dict[int, tuple[int, ...]],
                 aliases: dict[int, int], acc_id: int, sizes: SizeArgs) -> None:
        self.name = ""
        self.nodes = nodes
        self.shape = (1,)  # only read for "rank > 0": every frame has a last dim
        self.inputs = inputs
        self.outputs = outputs
        self.frames = {i: f or (1,) for i, f in frames.items()}
        self.strides = {v.id: broadcast_strides(v, self.frames[v.id]) for v in inputs + outputs}
        self.follows = {v.id: follows_dims(v, self.frames[v.id]) for v in inputs + outputs}
        self.sizes = sizes
        self.local: dict[int, str] = {acc_id: "vacc"}
        for v in inputs + [n.outputs[0] for n in nodes]:
            self.local.setdefault(v.id, f"v{len(self.local)}")
        for alias, source in aliases.items():
            self.local[alias] = self.local[source]

    def lines(self) -> list[str]:
        """Loads, op expressions and stores for element ``j`` of the row (bases ``b*`` set per row)."""
        return self._body()


class MatmulSource:
    """The C++ function of one matmul group (``name`` is its C symbol) and its schedule space."""

    def __init__(self, name: str, nodes: list[Node], anchor: Node, materialize: set[int]) -> None:
        from .toolchain import cpu_description

        self.name = name
        self.nodes = nodes
        self.anchor = anchor
        reason = supported_matmul(anchor)
        if reason:
            raise BuildError(f"{anchor.op}: {reason}")
        self.a, self.b = anchor.args[0], anchor.args[1]
        self.out = anchor.outputs[0]
        self.batched = packet_name(anchor.target) == "aten.bmm"
        if self.batched:
            self.nb, self.m, self.k = self.a.type.shape
            self.n = self.b.type.shape[2]
        else:
            (self.m, self.k), self.n, self.nb = self.a.type.shape, self.b.type.shape[1], 1
        self.dtype = self.a.type.dtype
        self.compute = torch.float64 if self.dtype == torch.float64 else torch.float32
        #: the problem's sizes and strides, read at run time (see :mod:`.sizes`)
        self.sizes = SizeArgs()
        self._epilogue_structure(materialize)
        self.description = cpu_description()
        self.space = gemm_space(self.m, self.n, self.k, self.nb, self.compute, self.description, self.dtype)
        self.source = core_source(self.compute, self.description) + "\n" + self._function()

    # -- structure -------------------------------------------------------------------------
    def _epilogue_structure(self, materialize: set[int]) -> None:
        epilogue = [n for n in self.nodes if n is not self.anchor]
        total = self.nb * self.m * self.n
        ids = {o.id for n in self.nodes for o in n.outputs}
        frames: dict[int, tuple[int, ...]] = {}
        aliases: dict[int, int] = {}
        inputs: list[Value] = []
        for n in epilogue:
            if lookup(n.target).kind != "pointwise":
                raise BuildError(f"{n.op} cannot be a matmul epilogue")
            reason = supported_node(n)
            if reason:
                raise BuildError(f"{n.op}: {reason}")
            frame = tuple(n.outputs[0].type.shape)
            if (frame[-1] if frame else 1) != self.n or math.prod(frame) != total:
                raise BuildError(f"{n.op} produces {frame}, not rows of the matmul's {self.n} columns")
            frames[n.outputs[0].id] = frame
            for v in n.inputs:
                if v.id in ids:
                    if v.type.numel != total:
                        raise BuildError("an epilogue value is read through a broadcast")
                    continue
                source = _view_source(v)
                if source is not None and source.id in ids:
                    self._check_reshape(v, source, frame)
                    aliases[v.id] = source.id
                elif v.id not in frames:
                    frames[v.id] = frame
                    inputs.append(v)
                elif broadcast_strides(v, frames[v.id] or (1,)) != broadcast_strides(v, frame or (1,)):
                    raise BuildError(f"%{v.name} is read in two different row shapes")
        outputs = [o for n in epilogue for o in n.outputs if o.id in materialize]
        self.store_acc = self.out.id in materialize
        if not outputs and not self.store_acc:
            raise BuildError("group has no outputs")
        self.epilogue = _Epilogue(epilogue, inputs, outputs, frames, aliases, self.out.id, self.sizes)
        operands = [self.a, self.b] + inputs
        self.inputs = [v for i, v in enumerate(operands) if all(v.id != u.id for u in operands[:i])]
        self.outputs = outputs + ([self.out] if self.store_acc else [])

    @staticmethod
    def _check_reshape(v: Value, source: Value, frame: tuple[int, ...]) -> None:
        """``v`` (a view of the group's ``source``) must be a row-major reshape of it (same element order)."""
        if v.type.numel != source.type.numel or v.type.offset != source.type.offset:
            raise BuildError(f"%{v.name} is not the whole of %{source.name}")
        if not _contiguous(source.type.shape, source.type.strides) or not _contiguous(v.type.shape, v.type.strides):
            raise BuildError(f"%{v.name} reads %{source.name} out of row-major order")
        broadcast_strides(v, frame or (1,))  # raises unless v is the frame with leading 1s

    # -- code --------------------------------------------------------------------------------
    def launch_args(self, config: Config, c_ext: int = 0, c_ext_ld: int = 0) -> list[int]:
        """Scalars after the tensors: blocks, register block, threads, packing, order, B packing, extern C,
        the size array."""
        return [int(config["MC"]), int(config["NC"]), int(config["KC"]), int(config["MR"]), int(config["NR"]),
                int(config["threads"]), int(bool(config["pack"])), _ORDER[str(config["order"])],
                int(config["pack_b"] == "task"), int(bool(config.get("dot", False))), c_ext, c_ext_ld,
                self.sizes.address()]

    def _epilogue_lambda(self, ctype: str) -> list[str]:
        ep = self.epilogue
        lines = [f"  auto epi = [&](int64_t bi, int64_t i, int64_t j0, int64_t j1, const {ctype}* __restrict crow) {{",
                 f"    const int64_t row = bi * {self.sizes.size(self.m, 'M')} + i;", "    (void)row;"]
        shapes: list[tuple[int, ...]] = []
        for v in ep.inputs + ep.outputs:
            frame = ep.frames[v.id]
            if frame not in shapes:
                f = len(shapes)
                shapes.append(frame)
                lines.append(f"    int64_t rest{f} = row;")
                for d in range(len(frame) - 2, -1, -1):
                    size = self.sizes.size(frame[d], f"epilogue{f}.size{d}")
                    lines.append(f"    const int64_t i{f}_{d} = rest{f} % {size}; rest{f} /= {size};" if d else
                                 f"    const int64_t i{f}_0 = rest{f};")  # the outermost index needs no division
                lines.append(f"    (void)rest{f};")
            f = shapes.index(frame)
            strides = [ep.stride_code(v, d) for d in range(len(frame) - 1)]
            terms = [f"i{f}_{d} * {stride}" for d, stride in enumerate(strides) if stride is not None]
            lines.append(f"    const int64_t {ep._base(v)} = {' + '.join(terms) or '0'};")
        lines += ["    #pragma omp simd", "    for (int64_t j = j0; j < j1; ++j) {",
                  f"      const {CPP_TYPES[self.dtype]} vacc = {result_code(self.dtype, 'crow[j - j0]')};"]
        lines += ["      " + line for line in ep.lines()]
        if self.store_acc:
            st = self.out.type.strides
            sb, sm, sn = st if self.batched else (0, *st)
            z = self.sizes
            col = "j" if sn == 1 else f"j * {z.size(sn, 'C.stride_n')}"
            lines.append(f"      acc_out[bi * {z.size(sb, 'C.stride_b')} + i * {z.size(sm, 'C.stride_m')} + {col}] = "
                         f"{store_code(self.dtype, 'vacc')};")
        return lines + ["    }", "  };"]

    def _function(self) -> str:
        ctype = CPP_TYPES[self.compute]
        stype = storage_type(self.dtype)
        params = [f"const void* p{i}" for i in range(len(self.inputs))]
        params += [f"void* q{i}" for i in range(len(self.outputs))]
        scalars = ["mc", "nc", "kc", "mr", "nr", "threads", "pack", "order", "task_b", "dot", "c_ext", "c_ext_ld"]
        params += [f"int64_t {s}" for s in scalars]
        index = {v.id: i for i, v in enumerate(self.inputs)}
        casts = [f"  const {stype}* A = (const {stype}*)p{index[self.a.id]};",
                 f"  const {stype}* B = (const {stype}*)p{index[self.b.id]};"]
        for k, v in enumerate(self.epilogue.inputs):
            t = storage_type(v.type.dtype)
            casts.append(f"  const {t}* in{k} = (const {t}*)p{index[v.id]};")
        for k, v in enumerate(self.outputs):
            t = storage_type(v.type.dtype)
            name = "acc_out" if self.store_acc and k == len(self.outputs) - 1 else f"out{k}"
            casts.append(f"  {t}* {name} = ({t}*)q{k};")
        sa, sb = self.a.type.strides, self.b.type.strides
        sab, sam, sak = sa if self.batched else (0, *sa)
        sbb, sbk, sbn = sb if self.batched else (0, *sb)
        if self.batched and self.b.type.shape[0] == 1:
            sbb = 0
        if self.batched and self.a.type.shape[0] == 1:
            sab = 0
        z = self.sizes
        params.append(z.param)
        lam = self._epilogue_lambda(ctype)
        nb, m, n, k = z.size(self.nb, "B"), z.size(self.m, "M"), z.size(self.n, "N"), z.size(self.k, "K")
        strides = [z.size(sab, "A.stride_b"), z.size(sam, "A.stride_m"), z.size(sak, "A.stride_k"),
                   z.size(sbb, "B.stride_b"), z.size(sbk, "B.stride_k"), z.size(sbn, "B.stride_n")]
        body = "\n".join(casts + [z.declarations()] + lam)
        dot = "" if stype != "uint16_t" else f"""#if defined(__AVX512BF16__)
  if (dot) {{  // bfloat16 pairs through vdpbf16ps (the space offers it only where the CPU has it)
    tw_gemm<{stype}, {ctype}, decltype(epi), TwDotCore>(A, B, g, blk, epi);
    return;
  }}
#endif
"""
        return f"""extern "C" void {self.name}({', '.join(params)}) {{
{body}
  if (c_ext) {{
    tw_epilogue_only<{stype}, {ctype}>((const {stype}*)(intptr_t)c_ext, c_ext_ld, {nb}, {m}, {n}, threads, epi);
    return;
  }}
  const TwGemmShape g{{{nb}, {m}, {n}, {k}, {', '.join(strides)}}};
  const TwGemmBlocks blk{{mc, nc, kc, mr, nr, threads, pack, order, task_b}};
{dot}  tw_gemm<{stype}, {ctype}>(A, B, g, blk, epi);
}}
"""


class MatmulKernel(CpuKernel):
    """A generated matmul kernel; its ``extern`` configs run torch.mm/bmm, then the generated epilogue."""

    def __init__(self, source: MatmulSource) -> None:
        super().__init__(source, "matmul", source.space, source.nb * source.m * source.n)
        s = source
        epilogue_flops = s.nb * s.m * s.n * sum(lookup(n.target).flops_per_element for n in s.epilogue.nodes)
        self.problem = dataclasses.replace(
            self.problem, dims={"B": s.nb, "M": s.m, "N": s.n, "K": s.k},
            flops=float(2 * s.nb * s.m * s.n * s.k + epilogue_flops),
            meta={**self.problem.meta, "epilogue_ops": [n.op for n in s.epilogue.nodes]})

    def launch(self, tensors: Sequence[torch.Tensor], config: Config | None = None) -> None:
        """Call the C function (after torch.mm/bmm when ``config['extern']``)."""
        config = config or self.config
        if self.function is None:
            raise BuildError(f"kernel {self.name} has no compiled library (the build failed or never ran)")
        s = self.source
        pointers = [t.data_ptr() for t in tensors]
        if not config["extern"]:
            self.function(*pointers, *s.launch_args(config))
            return
        ids = [v.id for v in s.inputs]
        a, b = tensors[ids.index(s.a.id)], tensors[ids.index(s.b.id)]
        c = (torch.bmm if s.batched else torch.mm)(a, b).contiguous()
        self.function(*pointers, *s.launch_args(config, c.data_ptr(), s.n))

    def other_cores(self, default: Config) -> list[Config]:
        """The other bfloat16 core with its own default blocks, where the CPU has the dot core (raced
        with the default and extern: torch.mm/bmm, oneDNN's bfloat16 GEMM where torch uses it).
        One-thread LLaMA-GQA bf16 on the Zen 4, each core forced everywhere: FMA 66.6 ms, dot
        43.5 ms, extern 33.5 ms (eager 35-39): which wins differs by shape, threads and host."""
        s = self.source
        other = core_alternative(s.m, s.n, s.k, s.nb, s.compute, s.description, s.dtype)
        return [dict(default, **other)] if other is not None else []

    def describe_extra(self) -> dict[str, object]:
        """Explain: the fused epilogue ops and the problem size."""
        s = self.source
        return {**super().describe_extra(), "epilogue": [n.op for n in s.epilogue.nodes], "shape": [s.nb, s.m, s.n, s.k]}


def build_matmul(group: Group, materialize: set[int], name: str) -> MatmulKernel:
    """The CPU target's builder for ``matmul`` groups."""
    if group.anchor is None:
        raise BuildError("matmul group without its matmul")
    return MatmulKernel(MatmulSource(name, group.nodes, group.anchor, materialize))
