"""The matmul template (mm / bmm) with a fused pointwise epilogue.

Tiled like the Triton tutorial: programs grouped along M (``GROUP_M``) for L2 reuse, a K loop
with masked loads (any K), an fp32 accumulator. The epilogue is emitted by the same
:class:`~tilewright.targets.triton.emit.emitter.Emitter` as fused pointwise kernels, with the matmul
result available as ``acc`` at the tile's index ``(rm, rn)``: bias adds, activations,
residual adds and scaling (through views such as ``[B*T, N] -> [B, T, N]``) run on the tile
before it is written once.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ...ir.graph import Node, Value
from ...ir.registry import lookup, packet_name
from .emit.emitter import CodegenError, Emitter, Expr, Scope
from .jit import cdiv
from .source import KERNEL_HEADER, KernelSource, group_outputs, int64_cast, kernel_function
from .emit.indexing import Atom, Var, reshape_index
from .kernel import GeneratedKernel
from ...schedule.precision import fp32_matmul_policy, precision_choices
from .spaces import matmul_space

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


class MatmulKernelBuilder:
    """Builds the source of one matmul group: the mm/bmm node plus its epilogue nodes."""

    def __init__(self, name: str, anchor: Node, nodes: list[Node], materialize: set[int]) -> None:
        self.name = name
        self.anchor = anchor
        self.nodes = nodes
        self.ids = {n.id for n in nodes}
        self.outputs = group_outputs(nodes, materialize, "matmul group")
        for n in nodes:
            if n is not anchor and lookup(n.target).kind != "pointwise":
                raise CodegenError(f"{n.op} cannot be a matmul epilogue")

    def build(self) -> KernelSource:
        """Generate the kernel source (raises :class:`CodegenError` when not expressible)."""
        a, b = self.anchor.args[0], self.anchor.args[1]
        if not isinstance(a, Value) or not isinstance(b, Value):
            raise CodegenError("matmul operands must be tensors")
        batched = packet_name(self.anchor.target) == "aten.bmm"
        if a.type.dtype != b.type.dtype or a.type.dtype not in _SUPPORTED:
            raise CodegenError(f"matmul of {a.type.dtype} x {b.type.dtype} is not supported")
        out = self.anchor.outputs[0]
        if batched:
            nb, m, k = a.type.shape
            n = b.type.shape[2]
        else:
            (m, k), n, nb = a.type.shape, b.type.shape[1], 1
        if min(m, n, k, nb) == 0:
            raise CodegenError("empty matmul")
        epilogue_nodes = [nd for nd in self.nodes if nd is not self.anchor]
        rm, rn, bid = Var("rm"), Var("rn"), Var("bid")
        canon: tuple[Atom, ...] = (bid, rm, rn) if batched else (rm, rn)
        canon = reshape_index(canon, out.type.shape, out.type.shape)  # size-1 dims index as 0
        acc = Expr("acc", torch.float32, frozenset(["rm", "rn"]))
        special: dict[int, Callable[[tuple[Atom, ...]], Expr | None]] = {
            out.id: lambda idx: acc if tuple(idx) == canon else None}
        scope = Scope([])
        emitter = Emitter(self.ids, {"rm": "mask_m", "rn": "mask_n"}, lambda deps: scope, special)
        a_name, b_name = emitter.arg_name(a), emitter.arg_name(b)
        for v in self.outputs:
            idx = reshape_index(canon, out.type.shape, v.type.shape)
            expr = emitter.value(v, idx)
            emitter.store(v, idx, expr, scope, "[BLOCK_M, BLOCK_N]", frozenset(["rm", "rn"]))
        sa, sb = a.type.strides, b.type.strides
        if batched:
            sab, sam, sak = sa
            sbb, sbk, sbn = sb
        else:
            (sam, sak), (sbk, sbn), sab, sbb = sa, sb, 0, 0
        wide = int64_cast([a, b] + self.outputs + list(emitter.inputs.values()), nb * max(m * n, m * k, k * n))
        fp32 = a.type.dtype == torch.float32
        policy = fp32_matmul_policy() if fp32 else ""
        dot = "tl.dot(a, b, input_precision=PRECISION)" if fp32 else "tl.dot(a, b)"
        head = _program_body(m, n, k, wide, a_name, b_name, (sab, sam, sak), (sbb, sbk, sbn), dot,
                             f"# float32 matmul policy: {policy}" if fp32 else "# half-precision operands")
        params = [emitter.arg_names[v.id] for v in emitter.inputs.values()]
        params += [emitter.arg_name(v, "out") for v in self.outputs]
        params += ["c_ext", "BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "BLOCK_K: tl.constexpr",
                   "GROUP_M: tl.constexpr", "EXTERN: tl.constexpr"]
        if fp32:
            params.append("PRECISION: tl.constexpr")
        source = KERNEL_HEADER + kernel_function(self.name, ", ".join(params), head + scope.lines)
        elem = a.type.dtype.itemsize
        space = matmul_space(m, n, k, elem, precision_choices(policy) if fp32 else None)
        inputs = list(emitter.inputs.values())
        direct = (not epilogue_nodes and len(self.outputs) == 1 and self.outputs[0] is out
                  and _row_major(out.type.shape, out.type.strides))
        grid = lambda c, m=m, n=n, nb=nb: (cdiv(m, int(c["BLOCK_M"])) * cdiv(n, int(c["BLOCK_N"])), nb)  # noqa: E731
        flops = 2.0 * nb * m * n * k
        meta: dict[str, Any] = {"epilogue_ops": [nd.op for nd in epilogue_nodes],
                                "operands": [inputs.index(a), inputs.index(b)], "batched": int(batched),
                                "extern_direct": int(direct)}
        if fp32:
            meta["precision"] = policy
        return KernelSource(self.name, "matmul", source, self.name, inputs, self.outputs,
                            space, grid, {"B": nb, "M": m, "N": n, "K": k}, [nd.op for nd in self.nodes], flops,
                            meta)


def _program_body(m: int, n: int, k: int, wide: str, a_name: str, b_name: str, sa: tuple[int, int, int],
                  sb: tuple[int, int, int], dot: str, comment: str) -> list[str]:
    """The kernel's lines before the epilogue: grouped (L2-friendly) program order, then either
    the K loop of ``tl.dot`` over masked tiles or the extern product loaded from ``c_ext``."""
    (sab, sam, sak), (sbb, sbk, sbn) = sa, sb
    return [
        comment,
        "pid = tl.program_id(0)",
        f"bid = tl.program_id(1){wide}",
        f"num_pid_m = tl.cdiv({m}, BLOCK_M)",
        f"num_pid_n = tl.cdiv({n}, BLOCK_N)",
        "num_pid_in_group = GROUP_M * num_pid_n",
        "group_id = pid // num_pid_in_group",
        "first_pid_m = group_id * GROUP_M",
        "group_size_m = min(num_pid_m - first_pid_m, GROUP_M)",
        "pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)",
        "pid_n = (pid % num_pid_in_group) // group_size_m",
        f"rm = (pid_m{wide} * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]",
        f"rn = (pid_n{wide} * BLOCK_N + tl.arange(0, BLOCK_N))[None, :]",
        f"mask_m = rm < {m}",
        f"mask_n = rn < {n}",
        "if EXTERN:  # the product was computed by torch.mm/bmm into c_ext (contiguous [B, M, N])",
        f"    acc = tl.load(c_ext + bid * {m * n} + rm * {n} + rn, mask=mask_m & mask_n, other=0.0).to(tl.float32)",
        "else:",
        "    rk = tl.arange(0, BLOCK_K)",
        f"    a_ptrs = {a_name} + bid * {sab} + rm * {sam} + rk[None, :] * {sak}",
        f"    b_ptrs = {b_name} + bid * {sbb} + rk[:, None] * {sbk} + rn * {sbn}",
        "    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)",
        f"    for kk in range(0, {k}, BLOCK_K):",
        f"        kmask = rk < {k} - kk",
        "        a = tl.load(a_ptrs, mask=mask_m & kmask[None, :], other=0.0)",
        "        b = tl.load(b_ptrs, mask=kmask[:, None] & mask_n, other=0.0)",
        f"        acc += {dot}",
        f"        a_ptrs += BLOCK_K * {sak}",
        f"        b_ptrs += BLOCK_K * {sbk}",
    ]


def _row_major(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Dense row-major (strides of size-1 dims ignored): what torch.mm/bmm(out=...) writes."""
    expected = 1
    for size, stride in zip(reversed(tuple(shape)), reversed(tuple(strides))):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


#: config parameters that are not constexprs of the kernel
_NOT_CONSTEXPR = ("num_warps", "num_stages", "extern")


class MatmulKernel(GeneratedKernel):
    """A generated matmul kernel whose ``extern`` configs run torch.mm/bmm (cuBLAS on a GPU), then the
    kernel's epilogue over that product (or nothing, when the product is the only output)."""

    def _arguments(self, tensors: Sequence[torch.Tensor], config: Any) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword launch arguments for ``config`` (runs the extern product first)."""
        meta = self.spec.meta
        scratch = tensors[-1]  # any pointer: the generated path never reads c_ext
        if config.get("extern"):
            ia, ib = meta["operands"]
            product = torch.bmm if meta["batched"] else torch.mm
            scratch = product(tensors[ia], tensors[ib]).contiguous()
        kwargs = {k: v for k, v in config.items() if k not in _NOT_CONSTEXPR}
        kwargs.update(EXTERN=bool(config.get("extern")), num_warps=config["num_warps"],
                      num_stages=config["num_stages"])
        return [*tensors, scratch], kwargs

    def launch(self, tensors: Sequence[torch.Tensor], config: Any = None) -> None:
        """Launch on ``tensors`` (inputs then outputs); extern configs call torch.mm/bmm first."""
        config = config or self.config
        if config.get("extern") and self.spec.meta["extern_direct"]:
            ia, ib = self.spec.meta["operands"]
            product = torch.bmm if self.spec.meta["batched"] else torch.mm
            product(tensors[ia], tensors[ib], out=tensors[-1])  # the product is the only output
            return
        fn = self._function_for(config)
        args, kwargs = self._arguments(tensors, config)
        fn[self.spec.grid(config)](*args, **kwargs)

    def tensor_launcher(self) -> Any:
        """The runtime's fast path: :meth:`launch` with the current config bound."""
        config = dict(self.config)
        if not config.get("extern"):
            launch = self._function_for(config)[self.spec.grid(config)]
            scratch_free = {k: v for k, v in config.items() if k not in _NOT_CONSTEXPR}
            scratch_free.update(EXTERN=False, num_warps=config["num_warps"], num_stages=config["num_stages"])
            return lambda *tensors: launch(*tensors, tensors[-1], **scratch_free)
        return lambda *tensors: self.launch(tensors, config)

    def describe_extra(self) -> dict[str, Any]:
        """The fused epilogue ops, and for float32 the ``tl.dot`` precision or cuBLAS."""
        extra = super().describe_extra()
        if self.config.get("extern"):
            extra["gemm"] = "extern torch." + ("bmm" if self.spec.meta["batched"] else "mm")
        elif "PRECISION" in self.config:
            extra["precision"] = self.config["PRECISION"]
        return extra
