"""Convolution groups on the CPU target: aten.convolution plus its fused pointwise epilogue.

The convolution (2-D, NCHW as torch gives it; 1-D as 2-D with a unit height) runs as the
implicit GEMM or the direct depthwise kernel of :mod:`.conv_source`; each finished run of output
pixels of one output channel goes, in cache, through a lambda that adds the bias and evaluates the
group's pointwise nodes (folded batch norm's bias, ReLU/SiLU/GELU, a residual add, casts...) with
the same C++ bodies as pointwise kernels, storing only the materialized values. Epilogue operands
are read through broadcast strides over the output's ``[N, K, OH, OW]`` frame.

The schedule space's ``extern`` candidate runs torch.convolution (oneDNN) into a scratch tensor and
the same generated epilogue over it: the compile-time race (:meth:`CpuTarget.race_candidates`)
keeps it only where it measures faster. A weight that is a graph input is packed once per
version (``wpack=cached``); computed weights (batch norm folded into them) are read in place.
"""
from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from ...errors import BuildError
from ...ir.graph import Node, Value
from ...ir.registry import lookup, packet_name
from ...schedule.group import Group
from ...schedule.space import Config
from .conv_dot import CONV_DOT_CORE, pack_weight_pairs
from .conv_source import CORE, conv_alternative, conv_space
from .gemm_micro import core_source
from .kernel import CpuKernel
from .pointwise import PointwiseSource, broadcast_strides, supported_node
from .scalar_ops import CPP_TYPES, load_code, result_code, storage_type, store_code

log = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
_WMODE = {"cached": 0, "strided": 1, "task": 2}


def _pair(v: Any) -> tuple[int, int]:
    vals = [int(e) for e in v] if isinstance(v, (list, tuple)) else [int(v)]
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])


def supported_conv(node: Node) -> str | None:
    """None when this module generates the convolution ``node``, else why not (shown in explain)."""
    if packet_name(node.target) != "aten.convolution":
        return f"no C++ template for {packet_name(node.target)}"
    x, w, bias = node.args[0], node.args[1], node.args[2]
    if not isinstance(x, Value) or not isinstance(w, Value):
        return "convolution operands must be tensors"
    transposed, groups = node.args[6], int(node.args[8])
    if transposed:
        return "transposed convolution is not generated for CPU (oneDNN runs it)"
    if x.type.rank not in (3, 4):
        return f"{x.type.rank - 2}-D convolution is not generated for CPU (oneDNN runs it)"
    out = node.outputs[0]
    dtypes = {x.type.dtype, w.type.dtype, out.type.dtype} | ({bias.type.dtype} if isinstance(bias, Value) else set())
    if len(dtypes) != 1 or x.type.dtype not in _DTYPES:
        return f"convolution in {sorted(str(d) for d in dtypes)} is not generated for CPU"
    if any(v.type.device.type != "cpu" for v in (x, w, out)):
        return "operand not on the CPU"
    if out.type.numel == 0 or x.type.numel == 0:
        return "empty convolution"
    if groups < 1 or x.type.shape[1] % groups or w.type.shape[0] % groups:
        return f"channels not divisible by groups={groups}"
    if not _weight_rows_dense(w):
        return "weight is not dense along (in-channel, kernel height, kernel width)"
    if isinstance(bias, Value) and bias.type.rank != 1:
        return "bias is not 1-D"
    return None


def _weight_rows_dense(w: Value) -> bool:
    """Each output channel's weights are one dense row-major run (any stride between channels)."""
    expected = 1
    for size, stride in zip(reversed(w.type.shape[1:]), reversed(w.type.strides[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


class _Epilogue(PointwiseSource):
    """The pointwise part of a convolution group as a loop body over one run of output pixels
    (``j``: flat pixel index of channel ``k`` of image ``n``; ``vacc``: the convolution's value)."""

    def __init__(self, nodes: list[Node], inputs: list[Value], outputs: list[Value], strides: dict[int, list[int]],
                 acc_id: int) -> None:
        self.name = ""
        self.nodes = nodes
        self.shape = (1,)  # only read for "rank > 0"
        self.inputs = inputs
        self.outputs = outputs
        self.pixel_strides = strides
        self.local: dict[int, str] = {acc_id: "vacc"}
        for v in inputs + [n.outputs[0] for n in nodes]:
            self.local.setdefault(v.id, f"v{len(self.local)}")

    def _element(self, v: Value, array: str) -> str:
        stride = self.pixel_strides[v.id][-1]
        return f"{array}[{self._base(v)}{f' + j * INT64_C({stride})' if stride else ''}]"

    def lines(self) -> list[str]:
        """Loads, op expressions and stores for pixel ``j`` (bases ``b*`` set per run)."""
        lines = []
        for k, v in enumerate(self.inputs):
            t = CPP_TYPES[v.type.dtype]
            lines.append(f"const {t} {self._var(v)} = {load_code(v.type.dtype, self._element(v, f'in{k}'))};")
        for node in self.nodes:
            out = node.outputs[0]
            t = CPP_TYPES[out.type.dtype]
            lines.append(f"const {t} {self._var(out)} = {result_code(out.type.dtype, self._node_expr(node, t))};")
        for k, v in enumerate(self.outputs):
            lines.append(f"{self._element(v, f'out{k}')} = {store_code(v.type.dtype, self._var(v))};")
        return lines


def _pixel_strides(v: Value, shape: tuple[int, ...]) -> list[int]:
    """``[s_n, s_k, s_pixel]`` of ``v`` read at the output's ``[N, K, OH, OW]`` indices, where the
    two spatial dims merge into one flat pixel index; raises when they do not."""
    s = broadcast_strides(v, shape)
    if len(shape) == 3:  # 1-D convolution: [N, K, L]
        return s
    oh, ow = shape[2], shape[3]
    if ow == 1:
        return [s[0], s[1], s[2]]
    if oh != 1 and s[2] != s[3] * ow:
        raise BuildError(f"%{v.name} is not read along the flattened output pixels (strides {s})")
    return [s[0], s[1], s[3]]


class ConvSource:
    """The C++ function of one convolution group (``name`` is its C symbol) and its schedule space."""

    def __init__(self, name: str, nodes: list[Node], anchor: Node, materialize: set[int]) -> None:
        from .toolchain import cpu_description

        reason = supported_conv(anchor)
        if reason:
            raise BuildError(f"{anchor.op}: {reason}")
        self.name, self.nodes, self.anchor = name, nodes, anchor
        self.x, self.w = anchor.args[0], anchor.args[1]
        self.bias = anchor.args[2] if isinstance(anchor.args[2], Value) else None
        self.out = anchor.outputs[0]
        self.dtype = self.x.type.dtype
        self.compute = torch.float64 if self.dtype == torch.float64 else torch.float32
        self._geometry()
        self._epilogue_structure(materialize)
        self.description = cpu_description()
        cg, kg = self.c // self.groups, self.k // self.groups
        self.algo = "depthwise" if self.groups == self.c == self.k and self.groups > 1 else "gemm"
        self.weight_is_input = self.w.producer is None
        self.problem_args = (kg, self.oh * self.ow, cg * self.r * self.s, self.n * self.groups)
        self.space = conv_space(self.algo, *self.problem_args, self.compute, self.dtype, self.description,
                                self.weight_is_input)
        self.dot = True in self.space.params["dot"]  # the space offers the bfloat16 dot core
        self.source = (core_source(self.compute, self.description) + "\n" + CORE + "\n" +
                       (CONV_DOT_CORE + "\n" if self.dot else "") + self._function())

    # -- structure -------------------------------------------------------------------------
    def _geometry(self) -> None:
        x, w, out = self.x.type, self.w.type, self.out.type
        stride, padding, dilation = (list(a) for a in self.anchor.args[3:6])
        self.groups = int(self.anchor.args[8])
        one_d = x.rank == 3
        self.n, self.c = int(x.shape[0]), int(x.shape[1])
        self.h, self.wd = (1, int(x.shape[2])) if one_d else (int(x.shape[2]), int(x.shape[3]))
        sx = list(x.strides)
        self.sx = [sx[0], sx[1], 0, sx[2]] if one_d else sx
        self.k = int(w.shape[0])
        self.r, self.s = (1, int(w.shape[2])) if one_d else (int(w.shape[2]), int(w.shape[3]))
        self.ldw = int(w.strides[0])
        if one_d:
            self.stride, self.padding, self.dilation = (1, int(stride[0])), (0, int(padding[0])), (1, int(dilation[0]))
        else:
            self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.oh, self.ow = (1, int(out.shape[2])) if one_d else (int(out.shape[2]), int(out.shape[3]))
        self.out_shape = tuple(int(d) for d in out.shape)

    def _epilogue_structure(self, materialize: set[int]) -> None:
        epilogue = [n for n in self.nodes if n is not self.anchor]
        ids = {o.id for n in self.nodes for o in n.outputs}
        inputs: list[Value] = []
        for n in epilogue:
            if lookup(n.target).kind != "pointwise":
                raise BuildError(f"{n.op} cannot be a convolution epilogue")
            reason = supported_node(n)
            if reason:
                raise BuildError(f"{n.op}: {reason}")
            if tuple(n.outputs[0].type.shape) != self.out_shape:
                raise BuildError(f"{n.op} produces {list(n.outputs[0].type.shape)}, not the convolution's "
                                 f"{list(self.out_shape)}")
            for v in n.inputs:
                if v.id in ids:
                    if tuple(v.type.shape) != self.out_shape:
                        raise BuildError("an epilogue value is read through a broadcast")
                elif all(v.id != u.id for u in inputs):
                    inputs.append(v)
        from .pointwise import check_no_view_of

        check_no_view_of(inputs, ids)
        outputs = [o for n in epilogue for o in n.outputs if o.id in materialize]
        self.store_acc = self.out.id in materialize
        if not outputs and not self.store_acc:
            raise BuildError("group has no outputs")
        strides = {v.id: _pixel_strides(v, self.out_shape) for v in inputs + outputs + [self.out]}
        self.epilogue = _Epilogue(epilogue, inputs, outputs, strides, self.out.id)
        operands = [self.x, self.w] + ([self.bias] if self.bias is not None else []) + inputs
        self.inputs = [v for i, v in enumerate(operands) if all(v.id != u.id for u in operands[:i])]
        self.outputs = outputs + ([self.out] if self.store_acc else [])

    # -- code --------------------------------------------------------------------------------
    def launch_args(self, config: Config, c_ext: int = 0, w_packed: int = 0) -> list[int]:
        """Scalars after the tensors: blocks, register block, threads, weight mode, dot core, extern C, packed W."""
        return [int(config["MC"]), int(config["NC"]), int(config["KC"]), int(config["MR"]), int(config["NR"]),
                int(config["threads"]), _WMODE[str(config["wpack"])], int(bool(config.get("dot", False))), c_ext,
                w_packed]

    def _epilogue_lambda(self, ctype: str) -> list[str]:
        ep = self.epilogue
        lines = [f"  auto epi = [&](int64_t ni, int64_t ki, int64_t j0, int64_t j1, const {ctype}* __restrict crow) {{"]
        for v in ep.inputs + ep.outputs:
            sn, sk, _ = ep.pixel_strides[v.id]
            lines.append(f"    const int64_t {ep._base(v)} = ni * INT64_C({sn}) + ki * INT64_C({sk});")
        if self.bias is not None:
            bias = load_code(self.dtype, f"bias[ki * INT64_C({self.bias.type.strides[0]})]")
            lines.append(f"    const {ctype} bk = add_bias ? ({ctype}){bias} : ({ctype})0;")
        else:
            lines.append(f"    const {ctype} bk = ({ctype})0;")
        lines += ["    #pragma omp simd", "    for (int64_t j = j0; j < j1; ++j) {",
                  f"      const {CPP_TYPES[self.dtype]} vacc = {result_code(self.dtype, 'crow[j - j0] + bk')};"]
        lines += ["      " + line for line in ep.lines()]
        if self.store_acc:
            sn, sk, sp = ep.pixel_strides[self.out.id]
            lines.append(f"      acc_out[ni * INT64_C({sn}) + ki * INT64_C({sk}) + j * INT64_C({sp})] = "
                         f"{store_code(self.dtype, 'vacc')};")
        return lines + ["    }", "  };"]

    def _function(self) -> str:
        ctype = CPP_TYPES[self.compute]
        stype = storage_type(self.dtype)
        params = [f"const void* p{i}" for i in range(len(self.inputs))]
        params += [f"void* q{i}" for i in range(len(self.outputs))]
        scalars = ["mc", "nc", "kc", "mr", "nr", "threads", "wmode", "dot", "c_ext", "w_packed"]
        params += [f"int64_t {s}" for s in scalars]
        index = {v.id: i for i, v in enumerate(self.inputs)}
        casts = [f"  const {stype}* X = (const {stype}*)p{index[self.x.id]};",
                 f"  const {stype}* W = (const {stype}*)p{index[self.w.id]};"]
        if self.bias is not None:
            casts.append(f"  const {stype}* bias = (const {stype}*)p{index[self.bias.id]};")
        for k, v in enumerate(self.epilogue.inputs):
            t = storage_type(v.type.dtype)
            casts.append(f"  const {t}* in{k} = (const {t}*)p{index[v.id]};")
        for k, v in enumerate(self.outputs):
            t = storage_type(v.type.dtype)
            name = "acc_out" if self.store_acc and k == len(self.outputs) - 1 else f"out{k}"
            casts.append(f"  {t}* {name} = ({t}*)q{k};")
        casts.append("  const bool add_bias = c_ext == 0;  // the extern convolution added the bias itself")
        body = "\n".join(casts + self._epilogue_lambda(ctype))
        geom = (f"{self.n}, {self.c}, {self.h}, {self.wd}, {', '.join(str(s) for s in self.sx)}, "
                f"{self.k}, {self.r}, {self.s}, {self.oh}, {self.ow}, {self.groups}, "
                f"{self.stride[0]}, {self.stride[1]}, {self.padding[0]}, {self.padding[1]}, "
                f"{self.dilation[0]}, {self.dilation[1]}")
        if self.algo == "depthwise":
            run = f"  tw_conv_depthwise<{stype}, {ctype}>(X, W, g, threads, epi);"
        else:
            run = "  const TwConvBlocks blk{mc, nc, kc, mr, nr, threads, wmode};\n"
            if self.dot:
                run += (f"  if (dot) {{\n#if defined(__AVX512BF16__)\n"
                        f"    tw_conv_gemm_dot(X, W, INT64_C({self.ldw}), (const uint32_t*)(intptr_t)w_packed, g, blk, epi);"
                        f"\n    return;\n#else\n    std::abort();\n#endif\n  }}\n")
            run += (f"  tw_conv_gemm<{stype}, {ctype}>(X, W, INT64_C({self.ldw}), (const {ctype}*)(intptr_t)w_packed, "
                    f"g, blk, epi);")
        return f"""extern "C" void {self.name}({', '.join(params)}) {{
{body}
  (void)mc; (void)nc; (void)kc; (void)mr; (void)nr; (void)wmode; (void)dot; (void)w_packed;
  if (c_ext) {{
    tw_conv_epilogue_only<{stype}, {ctype}>((const {stype}*)(intptr_t)c_ext, INT64_C({self.n}), INT64_C({self.k}),
                                          INT64_C({self.oh * self.ow}), threads, epi);
    return;
  }}
  const TwConvGeom g{{{geom}}};
{run}
}}
"""

    # -- weights -------------------------------------------------------------------------------
    def pack_weight(self, w: torch.Tensor, mr: int, dot: bool = False) -> torch.Tensor:
        """``w`` as ``[G][Kpad/MR][C/G*R*S][MR]`` micro-panels in the compute dtype (zero rows past K/G);
        for the dot core as pair words (:func:`.conv_dot.pack_weight_pairs`)."""
        if dot:
            return pack_weight_pairs(w, self.groups, mr)
        kg = self.k // self.groups
        kpad = -(-kg // mr) * mr
        rows = w.reshape(self.groups, kg, -1).to(self.compute)
        if kpad != kg:
            rows = torch.nn.functional.pad(rows, (0, 0, 0, kpad - kg))
        return rows.reshape(self.groups, kpad // mr, mr, -1).transpose(2, 3).contiguous()


class PackedWeight:
    """A weight packed into micro-panels, repacked only when the weight changed (another tensor, or an
    in-place update: the version counter moved). Inference tensors keep no version counter: they are
    repacked at every call.

    NOTE: the tensor itself is part of the key (a weak reference: the cache keeps no weight alive).
    Its address and version alone are not: a new tensor may be allocated where a dead one was, with
    the same version (0) -- e.g. a hoisted weight recomputed after the compile-time race packed the
    random weights it timed with -- and would have been served the dead tensor's packing."""

    def __init__(self, source: ConvSource) -> None:
        self.source = source
        self._key: tuple[Any, ...] | None = None
        self._ref: weakref.ref[torch.Tensor] | None = None
        self._packed: torch.Tensor | None = None

    def get(self, w: torch.Tensor, mr: int, dot: bool = False) -> torch.Tensor:
        """``w`` packed for register blocks of ``mr`` rows, as pairs for the dot core (cached while unchanged)."""
        try:
            key = (w.data_ptr(), w._version, tuple(w.shape), tuple(w.stride()), w.dtype, mr, dot)
        except RuntimeError:  # an inference tensor: no version counter
            return self.source.pack_weight(w, mr, dot)
        if key != self._key or self._packed is None or self._ref is None or self._ref() is not w:
            self._packed, self._key, self._ref = self.source.pack_weight(w, mr, dot), key, weakref.ref(w)
        return self._packed


class ConvKernel(CpuKernel):
    """A generated convolution kernel; ``extern`` configs run torch.convolution, then the generated epilogue."""

    def __init__(self, source: ConvSource) -> None:
        s = source
        super().__init__(source, "conv", source.space, s.n * s.k * s.oh * s.ow)
        self.weights = PackedWeight(source)
        epilogue_flops = s.n * s.k * s.oh * s.ow * sum(lookup(n.target).flops_per_element for n in s.epilogue.nodes)
        macs = s.n * s.k * s.oh * s.ow * (s.c // s.groups) * s.r * s.s
        self.problem = dataclasses.replace(
            self.problem,
            dims={"N": s.n, "C": s.c, "K": s.k, "H": s.h, "W": s.wd, "R": s.r, "S": s.s, "G": s.groups,
                  "stride": s.stride[1], "M": s.k // s.groups, "P": s.oh * s.ow, "KRS": (s.c // s.groups) * s.r * s.s},
            flops=float(2 * macs + epilogue_flops),
            meta={**self.problem.meta, "epilogue_ops": [n.op for n in s.epilogue.nodes], "algo": s.algo})

    def launch(self, tensors: Sequence[torch.Tensor], config: Config | None = None) -> None:
        """Call the C function (after torch.convolution when ``config['extern']``)."""
        config = config or self.config
        if self.function is None:
            raise BuildError(f"kernel {self.name} has no compiled library (the build failed or never ran)")
        s = self.source
        pointers = [t.data_ptr() for t in tensors]
        ids = [v.id for v in s.inputs]
        if config["extern"]:
            x, w = tensors[ids.index(s.x.id)], tensors[ids.index(s.w.id)]
            b = tensors[ids.index(s.bias.id)] if s.bias is not None else None
            stride, padding, dilation = self.source.anchor.args[3:6]
            c = torch.convolution(x, w, b, list(stride), list(padding), list(dilation), False,
                                  [0] * len(stride), s.groups).contiguous()
            self.function(*pointers, *s.launch_args(config, c.data_ptr()))
            return
        packed = 0
        keep: torch.Tensor | None = None
        if config["wpack"] == "cached" and s.algo == "gemm":
            keep = self.weights.get(tensors[ids.index(s.w.id)], int(config["MR"]), bool(config.get("dot", False)))
            packed = keep.data_ptr()
        self.function(*pointers, *s.launch_args(config, 0, packed))
        del keep

    def pointer_launcher(self) -> tuple[Any, list[int]] | None:
        """The runtime's fast path (only for configs that need no Python work before the call)."""
        c = self.config
        if self.function is None or c["extern"] or (c["wpack"] == "cached" and self.source.algo == "gemm"):
            return None
        return self.function, [int(a) for a in self.source.launch_args(c)]

    def other_cores(self, default: Config) -> list[Config]:
        """The other bfloat16 core with its own default blocks, where the CPU has the dot core (raced
        with the default and extern: torch.convolution, oneDNN, then the generated epilogue)."""
        s = self.source
        other = conv_alternative(*s.problem_args, s.compute, s.dtype, s.description, str(default["wpack"])) if s.dot else None
        return [other] if other is not None else []

    def describe_extra(self) -> dict[str, object]:
        """Explain: the algorithm, fused epilogue ops and the problem."""
        s = self.source
        return {"algo": s.algo, "epilogue": (["bias"] if s.bias is not None else []) +
                [n.op for n in s.epilogue.nodes],
                "shape": {"x": [s.n, s.c, s.h, s.wd], "w": [s.k, s.c // s.groups, s.r, s.s], "stride": list(s.stride),
                          "padding": list(s.padding), "groups": s.groups}}


def build_conv(group: Group, materialize: set[int], name: str) -> ConvKernel:
    """The CPU target's builder for ``conv`` groups."""
    if group.anchor is None:
        raise BuildError("convolution group without its convolution")
    return ConvKernel(ConvSource(name, group.nodes, group.anchor, materialize))


def conv_gradient_reason(node: Node) -> str | None:
    """Why a convolution gradient (aten.convolution_backward) runs as an ATen call on CPU, or None
    for other nodes."""
    if packet_name(node.target) != "aten.convolution_backward":
        return None
    return "convolution gradients are not generated for the CPU target yet: oneDNN's convolution_backward runs"


__all__ = ["ConvKernel", "ConvSource", "build_conv", "conv_gradient_reason", "supported_conv"]
