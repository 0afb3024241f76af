"""C++/OpenMP source for fused pointwise groups, and the kernel that launches it.

A group's nodes all produce the iteration shape ``S``. The kernel walks ``S`` as rows (every dim
but the last, decomposed once per row) times the last dim, split into blocks of ``BLOCK``
elements; OpenMP spreads the (row, block) tasks over ``threads`` threads and the inner loop over
the block is a unit-stride ``omp simd`` loop. Each operand is read through its own strides, with
stride 0 on broadcast dims, so broadcasting and strided views cost no copies. Values produced
inside the group stay in registers; only the values something outside the group reads are
stored, through the output's own strides.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ...errors import BuildError
from ...ir.graph import Node, Value
from ...ir.registry import lookup, packet_name
from ...schedule.space import Config, ScheduleSpace
from .scalar_ops import (
    BODIES,
    CPP_TYPES,
    OPERAND_CAST,
    literal,
    load_code,
    result_code,
    storage_type,
    store_code,
)
from .simd import VECTOR_OPS, vector_body
from .sizes import SizeArgs

SPACE_VERSION = "1"


def supported_node(node: Node) -> str | None:
    """None when this module generates ``node``, else why not."""
    name = packet_name(node.target)
    if name not in BODIES:
        return f"no C++ body for {name}"
    if lookup(node.target).extra.get("inplace"):
        reason = _inplace_reason(node)
        if reason:
            return reason
    for v in node.inputs + node.outputs:
        if v.type.dtype not in CPP_TYPES:
            return f"{v.type.dtype} is not generated for CPU yet"
        if v.type.device.type != "cpu":
            return f"operand on {v.type.device}"
    if any(isinstance(v, Value) for v in node.kwargs.values()):
        return "tensor keyword arguments"
    if len(node.outputs) != 1 or node.outputs[0].type.numel == 0:
        return "not one non-empty output"
    if name == "aten._to_copy" and node.kwargs.get("layout") not in (None, torch.strided):
        return "layout change"
    return None


def _view_root(v: Value) -> Value:
    """The value ``v`` is a view of (through any chain of view ops), or ``v`` itself."""
    node = v.producer
    while node is not None and lookup(node.target).kind == "view" and isinstance(node.args[0], Value):
        v = node.args[0]
        node = v.producer
    return v


def _inplace_reason(node: Node) -> str | None:
    """Why in-place ``node`` (``aten.copy_``) is not generated: it must write a graph input's own
    memory (as the runtime hands the kernel that tensor as its output), with the output's layout,
    and read no other view of it (elements written before another index reads them)."""
    dst = node.args[0]
    if not isinstance(dst, Value) or dst.producer is not None or dst.constant is not None:
        return "an in-place write into something other than a graph input"
    out = node.outputs[0]
    if tuple(out.type.shape) != tuple(dst.type.shape) or tuple(out.type.strides) != tuple(dst.type.strides):
        return "in-place output laid out unlike its destination"
    for a in node.inputs[1:]:
        if a.id != dst.id and _view_root(a).id == dst.id:
            return "in-place write whose source is a view of its destination"
    return None


def check_no_view_of(inputs: list[Value], ids: set[int]) -> None:
    """Raise when an operand is a view of a value the group computes (it is not in memory)."""
    for v in inputs:
        node = v.producer
        while node is not None and lookup(node.target).kind == "view":
            src = node.args[0]
            if not isinstance(src, Value):
                break
            if src.id in ids:
                raise BuildError(f"%{v.name} is a view of a value computed inside the group")
            node = src.producer


def group_io(nodes: list[Node], ids: set[int], materialize: set[int]) -> tuple[list[Value], list[Value]]:
    """The group's operands from outside (in order of first use) and the values it must store."""
    outputs = [o for n in nodes for o in n.outputs if o.id in materialize]
    if not outputs:
        raise BuildError("group has no outputs")
    inputs: list[Value] = []
    for node in nodes:
        for a in node.inputs:
            if a.id not in ids and all(a.id != i.id for i in inputs):
                inputs.append(a)
    check_no_view_of(inputs, ids)
    return inputs, outputs


def pointer_casts(inputs: list[Value], outputs: list[Value]) -> list[str]:
    """The kernel's typed views of its ``void*`` arguments (``in0``..., ``out0``...)."""
    lines = [f"  const {storage_type(v.type.dtype)}* in{i} = (const {storage_type(v.type.dtype)}*)p_in{i};"
             for i, v in enumerate(inputs)]
    lines += [f"  {storage_type(v.type.dtype)}* out{i} = ({storage_type(v.type.dtype)}*)p_out{i};"
              for i, v in enumerate(outputs)]
    return lines


def promoted_ctype(node: Node) -> str:
    """The C++ type both sides of a comparison are converted to (torch's type promotion)."""
    dtypes = [a.type.dtype for a in node.inputs]
    dtype = dtypes[0] if len(dtypes) == 1 else torch.promote_types(*dtypes[:2])
    scalars = [a for a in node.args if isinstance(a, (bool, int, float)) and not isinstance(a, Value)]
    if not dtype.is_floating_point and any(isinstance(s, float) for s in scalars):
        return "double"
    return CPP_TYPES[dtype]


def pointwise_space(numel: int, cores: int) -> ScheduleSpace:
    """Threads and inner block size; the default uses every core once the work is large enough."""
    threads = sorted({1, *(t for t in (2, 4, 8, 16, 32, 64) if t <= cores), cores})
    blocks = [256, 1024, 4096, 16384]
    default_threads = cores if numel >= 32768 else 1
    return ScheduleSpace("pointwise", {"BLOCK": list(blocks), "threads": threads},
                         default={"BLOCK": 4096, "threads": default_threads}, version=SPACE_VERSION)


def follows_dims(v: Value, shape: tuple[int, ...]) -> list[bool]:
    """Per dim of ``shape``: whether ``v`` has that dim (right-aligned). Kernels index ``v`` along
    every dim it has through a run-time stride (0 where it broadcasts): a batch of 1 or a
    broadcast along the batch then keeps the same kernel text as larger batches."""
    lead = len(shape) - v.type.rank
    return [d >= lead for d in range(len(shape))]


def broadcast_strides(v: Value, shape: tuple[int, ...]) -> list[int]:
    """Strides of ``v`` read at indices of ``shape`` (0 on broadcast dims); raises when it is not a broadcast."""
    lead = len(shape) - v.type.rank
    if lead < 0:
        raise BuildError(f"operand %{v.name} {v.type} has more dims than the iteration shape {shape}")
    strides = []
    for d, size in enumerate(shape):
        dv = d - lead
        if dv < 0 or v.type.shape[dv] == 1:
            strides.append(0)
        elif v.type.shape[dv] == size:
            strides.append(v.type.strides[dv])
        else:
            raise BuildError(f"operand %{v.name} {v.type} does not broadcast to {shape}")
    return strides


class PointwiseSource:
    """The C++ function of one pointwise group (``name`` is its C symbol)."""

    def __init__(self, name: str, nodes: list[Node], materialize: set[int], explicit_simd: bool = True) -> None:
        self.name = name
        self.nodes = nodes
        #: whole vectors through ``tw_vf`` where the body has a vector form (else ``omp simd`` only)
        self.explicit_simd = explicit_simd
        for node in nodes:
            reason = supported_node(node)
            if reason:
                raise BuildError(f"{node.op}: {reason}")
        self.shape = tuple(nodes[0].outputs[0].type.shape)
        ids = {n.outputs[0].id for n in nodes}
        for node in nodes:
            if tuple(node.outputs[0].type.shape) != self.shape:
                raise BuildError(f"{node.op} produces {node.outputs[0].type.shape}, the group iterates {self.shape}")
            for a in node.inputs:
                if a.id in ids and tuple(a.type.shape) != self.shape:
                    raise BuildError("a group value is read through a view")
        self.inputs, self.outputs = group_io(nodes, ids, materialize)
        self.strides = {v.id: broadcast_strides(v, self.shape) for v in self.inputs + self.outputs}
        self.follows = {v.id: follows_dims(v, self.shape) for v in self.inputs + self.outputs}
        #: sizes and strides read at run time (see :mod:`.sizes`)
        self.sizes = SizeArgs()
        # local names in order of appearance: the same group always gives the same source text
        self.local: dict[int, str] = {}
        for v in self.inputs + [n.outputs[0] for n in nodes]:
            self.local.setdefault(v.id, f"v{len(self.local)}")
        self.source = self._function()

    def _var(self, v: Value) -> str:
        return self.local[v.id]

    def _base(self, v: Value) -> str:
        return "b" + self.local[v.id][1:]

    def launch_args(self, config: Config) -> list[int]:
        """Scalar arguments after the tensors: the inner block size, the thread count, the sizes."""
        return [int(config["BLOCK"]), int(config["threads"]), self.sizes.address()]

    def _role(self, v: Value) -> str:
        """``in<k>`` or ``out<k>``: how explain names operand ``v``."""
        for k, u in enumerate(self.inputs):
            if u.id == v.id:
                return f"in{k}"
        return f"out{next(k for k, u in enumerate(self.outputs) if u.id == v.id)}"

    def stride_code(self, v: Value, d: int) -> str | None:
        """The stride of operand ``v`` along iteration dim ``d`` as C++ (None: it broadcasts there).
        The innermost stride is written into the code when it is 0 or 1 (the unit-stride vector
        loops depend on it); every other stride is a run-time size."""
        stride = self.strides[v.id][d]
        last = d == len(self.strides[v.id]) - 1
        if not self.follows[v.id][d]:
            return None
        if last and stride in (0, 1):
            self.sizes.fixed(stride, f"{self._role(v)}.stride{d}")
            return None if stride == 0 else "1"
        return self.sizes.size(stride, f"{self._role(v)}.stride{d}")

    def _operand(self, arg: Any, node: Node, index: int, ctype: str) -> str:
        mode = OPERAND_CAST.get(packet_name(node.target), "out")
        if mode == "promote":
            ctype = promoted_ctype(node)
        if isinstance(arg, Value):
            code = self._var(arg)
            keep = mode == "none" or (mode == "where" and index == 0) or (mode == "masked_fill" and index == 1)
            return code if keep else f"(({ctype}){code})"
        if arg is None:
            return "None"
        return literal(arg) if packet_name(node.target) in ("aten.where", "aten.masked_fill") and index == 0 \
            else f"(({ctype}){literal(arg)})"

    def _node_expr(self, node: Node, t: str) -> str:
        if packet_name(node.target) == "tilewright.dropout_mask":  # (x, seed, p): the mask of element r*L + j
            p = float(node.args[2])
            if not 0.0 <= p <= 1.0:
                raise BuildError(f"dropout probability {p} is outside [0, 1]")
            index = f"(uint64_t)(r * INT64_C({self.shape[-1] if self.shape else 1}) + j)"
            return BODIES["tilewright.dropout_mask"](["", self._var(node.args[1]), f"{p!r}f"], {}, t) \
                .replace("tw_index", index)
        args = [self._operand(a, node, i, t) for i, a in enumerate(node.args)]
        if packet_name(node.target) == "aten.where" and not isinstance(node.args[1], Value) \
                and not isinstance(node.args[2], Value):
            args = [args[0], f"(({t}){literal(node.args[1])})", f"(({t}){literal(node.args[2])})"]
        return BODIES[packet_name(node.target)](args, dict(node.kwargs), t)

    def _element(self, v: Value, array: str) -> str:
        stride = self.stride_code(v, len(self.strides[v.id]) - 1) if self.shape else None
        if stride is None:
            return f"{array}[{self._base(v)}]"
        return f"{array}[{self._base(v)} + j{'' if stride == '1' else ' * ' + stride}]"

    def _body(self) -> list[str]:
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

    def _vector_body(self) -> list[str] | None:
        """The body on ``tw_vf`` vectors of ``TW_VW`` elements at ``j`` (every value float32, every
        operand contiguous or broadcast along the last dim), or None."""
        values = self.inputs + self.outputs + [n.outputs[0] for n in self.nodes]
        if not self.shape or any(v.type.dtype != torch.float32 for v in values):
            return None
        if any(self.strides[v.id][-1] not in (0, 1) for v in self.inputs) or \
                any(self.strides[v.id][-1] != 1 for v in self.outputs):
            return None
        lines = []
        for k, v in enumerate(self.inputs):
            element = self._element(v, f"in{k}")
            load = f"tw_vf({element})" if self.strides[v.id][-1] == 0 else f"tw_vf::load(&{element})"
            lines.append(f"const tw_vf {self._var(v)} = {load};")
        for node in self.nodes:
            body = vector_body(self._node_expr(node, "tw_vf")) if packet_name(node.target) in VECTOR_OPS else None
            if body is None:
                return None
            lines.append(f"const tw_vf {self._var(node.outputs[0])} = (tw_vf)({body});")
        for k, v in enumerate(self.outputs):
            lines.append(f"{self._var(v)}.store(&{self._element(v, f'out{k}')});")
        return lines

    def _inner_loops(self) -> str:
        """The loop over one block: explicit SIMD over whole vectors where the body has a vector
        form (``explicit_simd``), then (or only) the ``omp simd`` loop."""
        scalar = "\n".join("      " + line for line in self._body())
        vector = self._vector_body() if self.explicit_simd else None
        start = "j0"
        head = ""
        if vector is not None:
            start = "jv"
            body = "\n".join("      " + line for line in vector)
            head = f"""    int64_t jv = j0;
#if TW_VW
    for (; jv + TW_VW <= j1; jv += TW_VW) {{
      const int64_t j = jv;
{body}
    }}
#endif
"""
        return f"""{head}    #pragma omp simd
    for (int64_t j = {start}; j < j1; ++j) {{
{scalar}
    }}"""

    def _function(self) -> str:
        shape = self.shape or (1,)
        z = self.sizes
        sizes = [z.size(n, f"size{d}") for d, n in enumerate(shape)]
        length = sizes[-1]
        rows = z.size(math.prod(shape[:-1]), "rows")
        values = self.inputs + self.outputs
        params = [f"const void* p_in{i}" for i in range(len(self.inputs))]
        params += [f"void* p_out{i}" for i in range(len(self.outputs))]
        casts = pointer_casts(self.inputs, self.outputs)
        row_index = ["    int64_t rest = r;"]
        bases: dict[int, list[str]] = {v.id: [] for v in values}
        for d in range(len(shape) - 2, -1, -1):
            row_index.append(f"    const int64_t i{d} = rest % {sizes[d]}; rest /= {sizes[d]};" if d else
                             "    const int64_t i0 = rest;")  # the outermost index needs no division
            for v in values:
                stride = self.stride_code(v, d) if self.shape else None
                if stride is not None:
                    bases[v.id].append(f"i{d} * {stride}")
        row_index.append("    (void)rest;")
        row_index += [f"    const int64_t {self._base(v)} = {' + '.join(bases[v.id]) or '0'};" for v in values]
        inner = self._inner_loops()
        return f"""extern "C" void {self.name}({', '.join(params + ['int64_t block', 'int64_t threads', z.param])}) {{
{chr(10).join(casts)}
{z.declarations()}
  const int64_t blocks = ({length} + block - 1) / block;
  const int64_t tasks = {rows} * blocks;
  #pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(static) if(tw_nthreads(threads) > 1)
  for (int64_t task = 0; task < tasks; ++task) {{
    const int64_t r = task / blocks;
    const int64_t j0 = (task % blocks) * block;
    const int64_t j1 = j0 + block < {length} ? j0 + block : {length};
{chr(10).join(row_index)}
{inner}
  }}
}}
"""
