"""The matmul template (mm / bmm) with a fused pointwise epilogue.

Tiled like the Triton tutorial: programs grouped along M (``GROUP_M``) for L2 reuse, a K loop
with masked loads (any K), an fp32 accumulator. The epilogue is emitted by the same
:class:`~tilewright.targets.triton.emit.emitter.Emitter` as fused pointwise kernels, with the matmul
result available as ``acc`` at the tile's index ``(rm, rn)``: bias adds, activations,
residual adds and scaling (through views such as ``[B*T, N] -> [B, T, N]``) run on the tile
before it is written once.
"""
from __future__ import annotations

from typing import Callable

import torch

from ...ir.graph import Node, Value
from ...ir.registry import lookup, packet_name
from .emit.emitter import CodegenError, Emitter, Expr, Scope
from .jit import cdiv
from .source import KERNEL_HEADER, KernelSource, group_outputs, int64_cast, kernel_function
from .emit.indexing import Atom, Var, reshape_index
from .spaces import matmul_space

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


def _precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return ""
    from .jit import interpret_mode

    if not interpret_mode() and torch.backends.cuda.matmul.allow_tf32:
        return ', input_precision="tf32"'
    return ', input_precision="ieee"'


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
        head = [
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
            "rk = tl.arange(0, BLOCK_K)",
            f"mask_m = rm < {m}",
            f"mask_n = rn < {n}",
            f"a_ptrs = {a_name} + bid * {sab} + rm * {sam} + rk[None, :] * {sak}",
            f"b_ptrs = {b_name} + bid * {sbb} + rk[:, None] * {sbk} + rn * {sbn}",
            "acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)",
            f"for kk in range(0, {k}, BLOCK_K):",
            f"    kmask = rk < {k} - kk",
            "    a = tl.load(a_ptrs, mask=mask_m & kmask[None, :], other=0.0)",
            "    b = tl.load(b_ptrs, mask=kmask[:, None] & mask_n, other=0.0)",
            f"    acc += tl.dot(a, b{_precision(a.type.dtype)})",
            f"    a_ptrs += BLOCK_K * {sak}",
            f"    b_ptrs += BLOCK_K * {sbk}",
        ]
        params = [emitter.arg_names[v.id] for v in emitter.inputs.values()]
        params += [emitter.arg_name(v, "out") for v in self.outputs]
        params += ["BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "BLOCK_K: tl.constexpr", "GROUP_M: tl.constexpr"]
        source = KERNEL_HEADER + kernel_function(self.name, ", ".join(params), head + scope.lines)
        elem = a.type.dtype.itemsize
        space = matmul_space(m, n, k, elem)
        grid = lambda c, m=m, n=n, nb=nb: (cdiv(m, int(c["BLOCK_M"])) * cdiv(n, int(c["BLOCK_N"])), nb)  # noqa: E731
        flops = 2.0 * nb * m * n * k
        epilogue = [nd.op for nd in self.nodes if nd is not self.anchor]
        return KernelSource(self.name, "matmul", source, self.name, list(emitter.inputs.values()), self.outputs,
                            space, grid, {"B": nb, "M": m, "N": n, "K": k}, [nd.op for nd in self.nodes], flops,
                            {"epilogue_ops": epilogue})
