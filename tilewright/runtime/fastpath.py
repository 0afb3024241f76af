"""The fast path of a compiled graph: one generated Python function per specialisation.

:class:`~tilewright.runtime.graph.CompiledGraph` interprets its plan step by step on its first
call (and whenever something unusual happens); after a first successful call it emits this
straight-line function from the same plan, which then runs every normal call:

- inputs are bound to locals and each local is dropped after its last use (the caller's input
  list is cleared once the first input dies, so training memory does not grow);
- views are ``as_strided`` with sizes, strides and offsets worked out once (on meta tensors);
  a kernel that only needs a view's address gets the root's address plus a constant;
- kernels launch through a prebound launcher when the kernel offers one
  (``pointer_launcher()``: a C function and its scalar arguments, called on data pointers;
  ``tensor_launcher()``: a callable on tensors), else through ``launch``;
- intermediate buffers come from the plan's slots; small slots are allocated once per
  specialisation and reused across calls (their addresses are constants), larger ones once per
  call. A buffer whose contents can escape (a graph output, or an input of an extern call that
  leads to one) is always fresh;
- extern ATen calls have their constant arguments prebound, and keep ``_store``'s layout fix.

Every kernel launch checks that the kernel is not broken and keeps the config the launcher was
bound to; otherwise (and when a launch raises) the graph's general handlers run it, with the
same fallback, reporting and strict-mode behaviour as the interpreter.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ir.graph import Graph, Value, flatten_values
from ..ir.registry import lookup
from .plan import ExternStep, FreeStep, KernelStep, Plan, root_value
from .reference import evaluate_value


@dataclass
class FastSettings:
    """Switches of the fast path (``TILEWRIGHT_FAST_RUNTIME=0`` turns it off)."""

    enabled: bool = field(default_factory=lambda: os.environ.get("TILEWRIGHT_FAST_RUNTIME", "1").strip().lower()
                          not in ("0", "false", "no", "off"))
    #: slots up to this size are allocated once per specialisation and reused across calls
    persistent_slot_bytes: int = 1 << 20
    #: at most this many bytes of such slots per specialisation
    persistent_total_bytes: int = 16 << 20


settings = FastSettings()


class Unsupported(Exception):
    """The plan has something the fast path does not generate (the interpreter keeps running it)."""


@dataclass
class FastPath:
    """The generated function (``fn(inputs, flags)``) and what it was built from."""

    fn: Callable[[list[Any], list[bool]], Any]
    source: str
    #: the kernels it launches (verify state is checked by the graph)
    kernels: list[Any]
    #: bytes of slot storage it keeps between calls
    persistent_bytes: int

    @property
    def verified(self) -> bool:
        """Whether every working kernel has been compared with its reference."""
        return all(k.verified or k.broken is not None for k in self.kernels)


def _escaping(graph: Graph, plan: Plan) -> set[int]:
    """Root ids whose memory may be returned: output roots, and the inputs of extern calls
    (which may return an alias of an input) that lead to them."""
    escape = {root_value(v).id for v in graph.output_values()}
    for step in reversed(plan.steps):
        if isinstance(step, ExternStep) and any(o.id in escape for o in step.node.outputs):
            escape |= {root_value(v).id for v in step.node.inputs}
    return escape


def _single_tensor_return(target: Any) -> bool:
    schema = getattr(target, "_schema", None)
    return schema is not None and len(schema.returns) == 1 and str(schema.returns[0].type) == "Tensor"


def _tensors_of(result: Any) -> list[Any]:
    """``_store``'s reading of a result: its tensors (a single result: itself)."""
    if isinstance(result, (list, tuple)):
        return [r for r in result if isinstance(r, torch.Tensor)]
    return [result]


def _fix_layout(t: Any, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    """``t`` copied into the layout the plan was built for (``_store``'s fix)."""
    fixed = torch.empty_strided(shape, strides, dtype=t.dtype, device=t.device)
    fixed.copy_(t)
    return fixed


def _on_storage(storage: Any, dtype: torch.dtype, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    """A tensor of ``dtype``/``shape``/``strides`` over untyped ``storage`` (from offset 0)."""
    return torch.empty(0, dtype=dtype, device=storage.device).set_(storage, 0, shape, strides)


def _empty_cpu() -> Callable[..., Any] | None:
    """Torch's lean CPU ``empty_strided`` (what Inductor's generated code calls), when it has one."""
    try:
        from torch._C._dynamo.guards import _empty_strided_cpu
    except ImportError:  # pragma: no cover - older or newer torch
        return None
    return _empty_strided_cpu  # type: ignore[no-any-return]


_EMPTY_CPU = _empty_cpu()


def _callable(target: Any) -> Any:
    """An ATen overload's C++ callable (its ``__call__`` adds a Python frame), else ``target``."""
    op = getattr(target, "_op", None)
    return op if isinstance(target, torch._ops.OpOverload) and callable(op) else target


def _launcher(kernel: Any, method: str) -> Any:
    """``kernel.<method>()`` (a prebound launcher), or None when it has none or cannot make one
    now (the kernel then launches through ``launch``, whose failure is its fallback)."""
    make = getattr(kernel, method, None)
    try:
        return make() if make is not None else None
    except Exception:  # e.g. a kernel that fails to compile: ``launch`` raises it at run time
        return None


def _new_storage(nbytes: int, device: Any) -> Any:
    return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device).untyped_storage()


class _Emitter:
    """Writes the fast function of one plan (see the module docstring)."""

    def __init__(self, graph: Graph, plan: Plan, handlers: Any) -> None:
        self.graph, self.plan = graph, plan
        self.ns: dict[str, Any] = {"_es": torch.empty_strided, "_on": _on_storage, "_st": _new_storage,
                                   "_fix": _fix_layout, "_tensors": _tensors_of, "_kfail": handlers.fast_kernel_failed,
                                   "_kslow": handlers.fast_kernel_slow, "_tmpl": handlers.fast_template}
        self.lines: list[str] = []
        self.alias: dict[int, Value] = {}      # in-place outputs: the value they write into
        self.static: dict[int, Any] = {}       # value id -> tensor fixed for the life of the fast path
        self.local: dict[int, str] = {}        # value id -> local holding its tensor now
        self.ptr: dict[int, str] = {}          # root value id -> local holding its data pointer
        self.views: dict[int, list[int]] = {}  # root id -> ids of views given a local (dropped with it)
        self.meta: dict[int, tuple[int, int] | None] = {}  # view id -> (root id, element delta) or None
        self.inputs_local: set[int] = set()
        self.kernels: list[Any] = []
        self.persistent = 0
        self.escape = _escaping(graph, plan)
        self.storages: dict[int, Any] = {}     # persistent slot -> storage
        self.slot_local: set[int] = set()      # per-call slots allocated so far in the call
        self.released_inputs = False
        self.fresh: set[int] = set()           # roots allocated here (storage offset 0)
        self._n = 0

    # -- names ----------------------------------------------------------------------------
    def const(self, obj: Any, hint: str = "C") -> str:
        """A namespace name bound to ``obj``."""
        self._n += 1
        name = f"{hint}{self._n}"
        self.ns[name] = obj
        return name

    def literal(self, obj: Any) -> str:
        """Source for a non-Value argument (ints, bools and None inline, the rest bound)."""
        if obj is None or isinstance(obj, bool) or (isinstance(obj, int) and not isinstance(obj, bool)):
            return repr(obj)
        if isinstance(obj, (list, tuple)) and all(o is None or isinstance(o, (int, bool)) for o in obj):
            return repr(list(obj)) if isinstance(obj, list) else repr(tuple(obj))
        return self.const(obj)

    def render(self, obj: Any, tensor: Callable[[Value], str]) -> str:
        """Source rebuilding a nested argument structure with ``tensor(v)`` for every Value."""
        if isinstance(obj, Value):
            return tensor(obj)
        if isinstance(obj, list) and any(True for _ in flatten_values(obj)):
            return "[" + ", ".join(self.render(o, tensor) for o in obj) + "]"
        if isinstance(obj, tuple) and any(True for _ in flatten_values(obj)):
            return "(" + "".join(self.render(o, tensor) + ", " for o in obj) + ")"
        if isinstance(obj, dict) and any(True for _ in flatten_values(obj)):
            return "{" + ", ".join(f"{k!r}: {self.render(o, tensor)}" for k, o in obj.items()) + "}"
        return self.literal(obj)

    def canon(self, v: Value) -> Value:
        while v.id in self.alias:
            v = self.alias[v.id]
        return v

    # -- views ----------------------------------------------------------------------------
    def view_info(self, v: Value) -> tuple[int, int] | None:
        """(root id, element offset from the root) when ``v`` is an ``as_strided`` of its root."""
        if v.id not in self.meta:
            root = root_value(v)
            info = None
            try:
                t = root.type
                base = torch.empty_strided(t.shape, t.strides, dtype=t.dtype, device="meta")
                got = evaluate_value(v, {root.id: base})
                if torch._C._is_alias_of(got, base) and got.dtype == t.dtype and \
                        tuple(got.shape) == v.type.shape and tuple(got.stride()) == v.type.strides:
                    info = (root.id, int(got.storage_offset()))
            except Exception:  # a view meta tensors cannot run: it runs its own op
                info = None
            self.meta[v.id] = info
        return self.meta[v.id]

    def is_view(self, v: Value) -> bool:
        return v.producer is not None and v.constant is None and lookup(v.producer.target).kind == "view"

    def view_expr(self, v: Value, tensor: Callable[[Value], str]) -> str:
        """Source computing view ``v`` from its root (or by its own op)."""
        info = self.view_info(v)
        if info is not None:
            root = root_value(v)
            base = tensor(root)
            t = v.type
            c = self.canon(root)
            offset = str(info[1]) if self.fresh_root(c) else f"{base}.storage_offset() + {info[1]}"
            return f"{base}.as_strided({t.shape!r}, {t.strides!r}, {offset})"
        node = v.producer
        assert node is not None
        call = f"{self.const(_callable(node.target), 'V')}(" + ", ".join(
            [self.render(a, tensor) for a in node.args] +
            [f"{k}={self.render(a, tensor)}" for k, a in node.kwargs.items()]) + ")"
        return f"{call}[{v.index}]" if len(node.outputs) > 1 else call

    def fresh_root(self, v: Value) -> bool:
        """A root this function allocated itself (storage offset 0)."""
        return v.id in self.fresh or v.id in self.static

    # -- tensors and pointers ---------------------------------------------------------------
    def tensor(self, v: Value) -> str:
        """A name holding ``v``'s tensor, emitting what computes it on the main path."""
        v = self.canon(v)
        if v.id in self.local:
            return self.local[v.id]
        if v.constant is not None:
            name = self.const(v.constant)
            self.local[v.id] = name
            return name
        if not self.is_view(v):
            raise Unsupported(f"value %{v.name} is not available")
        root = self.canon(root_value(v))
        if root.id in self.static and self.view_info(v) is not None:
            base = self.static[root.id]
            self.static[v.id] = base.as_strided(v.type.shape, v.type.strides,
                                                base.storage_offset() + self.view_info(v)[1])  # type: ignore[index]
            name = self.const(self.static[v.id], "B")
            self.local[v.id] = name
            return name
        expr = self.view_expr(v, self.tensor)
        name = f"t{v.id}"
        self.lines.append(f"{name} = {expr}")
        self.local[v.id] = name
        self.views.setdefault(root.id, []).append(v.id)
        return name

    def inline(self, v: Value) -> str:
        """Source computing ``v``'s tensor without emitting lines (for the slow branches)."""
        v = self.canon(v)
        if v.id in self.local:
            return self.local[v.id]
        if v.constant is not None or not self.is_view(v):
            return self.tensor(v)
        return self.view_expr(v, self.inline)

    def pointer(self, v: Value) -> str:
        """Source of ``v``'s data pointer (a constant when its memory is fixed)."""
        v = self.canon(v)
        if v.id in self.static:
            return str(self.static[v.id].data_ptr())
        if self.is_view(v) and self.view_info(v) is not None:
            root = self.canon(root_value(v))
            delta = self.view_info(v)[1] * v.type.dtype.itemsize  # type: ignore[index]
            base = self.pointer(root)
            return base if delta == 0 else (str(int(base) + delta) if base.isdigit() else f"({base} + {delta})")
        if v.constant is not None:
            return str(v.constant.data_ptr())
        if v.id not in self.ptr:
            name = f"p{v.id}"
            self.lines.append(f"{name} = {self.tensor(v)}.data_ptr()")
            self.ptr[v.id] = name
        return self.ptr[v.id]

    # -- buffers --------------------------------------------------------------------------
    def output_buffer(self, v: Value, slot: int) -> None:
        """Give kernel output ``v`` its memory: fresh, a persistent slot or a per-call slot."""
        t = v.type
        if slot >= 0 and v.id not in self.escape and t.numel:
            nbytes = self.plan.slot_bytes[slot]
            if slot in self.storages or (nbytes <= settings.persistent_slot_bytes and
                                         self.persistent + nbytes <= settings.persistent_total_bytes):
                if slot not in self.storages:
                    self.storages[slot] = _new_storage(nbytes, t.device)
                    self.persistent += nbytes
                self.static[v.id] = _on_storage(self.storages[slot], t.dtype, t.shape, t.strides)
                self.local[v.id] = self.const(self.static[v.id], "B")
                return
            if slot not in self.slot_local:
                self.lines.append(f"s{slot} = _st({nbytes}, {self.const(t.device)})")
                self.slot_local.add(slot)
            self.lines.append(f"t{v.id} = _on(s{slot}, {self.const(t.dtype)}, {t.shape!r}, {t.strides!r})")
        elif t.device.type == "cpu" and _EMPTY_CPU is not None:
            self.lines.append(f"t{v.id} = {self.const(_EMPTY_CPU, 'A')}({t.shape!r}, {t.strides!r}, "
                              f"{self.const(t.dtype)})")
        else:
            self.lines.append(f"t{v.id} = _es({t.shape!r}, {t.strides!r}, dtype={self.const(t.dtype)}, "
                              f"device={self.const(t.device)})")
        self.local[v.id] = f"t{v.id}"
        self.fresh.add(v.id)

    # -- steps ----------------------------------------------------------------------------
    def kernel_step(self, step: KernelStep) -> None:
        """Launch a kernel through its prebound launcher, the graph's handlers when unusual."""
        kernel = step.kernel
        for v, slot in zip(step.outputs, step.slots):
            if slot == -2:
                self.alias[v.id] = step.inplace[v.id]
            else:
                self.output_buffer(v, slot)
        if step.inplace:
            self.lines.append("w[0] = True")
        values = list(step.inputs) + list(step.outputs)
        s, k = self.const(step, "S"), self.const(kernel, "K")
        cfg = self.const(kernel.config, "G")
        launcher = _launcher(kernel, "pointer_launcher")
        if launcher is not None:
            fn, scalars = launcher
            call = f"{self.const(fn, 'F')}(" + ", ".join([self.pointer(v) for v in values] +
                                                           [repr(int(x)) for x in scalars]) + ")"
        else:
            fn = _launcher(kernel, "tensor_launcher")
            if fn is not None:
                call = f"{self.const(fn, 'F')}(" + ", ".join(self.tensor(v) for v in values) + ")"
            else:
                call = f"{k}.launch([" + ", ".join(self.tensor(v) for v in values) + "])"
        ins = "[" + ", ".join(self.inline(v) for v in step.inputs) + "]"
        outs = "[" + ", ".join(self.inline(v) for v in step.outputs) + "]"
        self.lines += [f"if {k}.broken is None and {k}.config is {cfg}:",
                       "    try:",
                       f"        {call}",
                       "    except Exception as e:",
                       f"        _kfail({s}, e, {ins}, {outs})",
                       "else:",
                       f"    _kslow({s}, {ins}, {outs})"]
        self.kernels.append(kernel)

    def extern_step(self, step: ExternStep) -> None:
        """An ATen call (or a template through the graph's handler) and ``_store``'s layout fix."""
        node = step.node
        if step.call is not None:
            args = "(" + "".join(self.render(a, self.tensor) + ", " for a in node.args) + ")"
            kwargs = "{" + ", ".join(f"{k!r}: {self.render(a, self.tensor)}" for k, a in node.kwargs.items()) + "}"
            call = f"_tmpl({self.const(step, 'S')}, {args}, {kwargs})"
        else:
            call = f"{self.const(_callable(node.target), 'E')}(" + ", ".join(
                [self.render(a, self.tensor) for a in node.args] +
                [f"{k}={self.render(a, self.tensor)}" for k, a in node.kwargs.items()]) + ")"
        if not node.outputs:
            self.lines.append(call)
            return
        if len(node.outputs) == 1 and step.call is None and _single_tensor_return(node.target):
            self.lines.append(f"t{node.outputs[0].id} = {call}")
        else:
            self.lines.append(f"r = _tensors({call})")
            self.lines += [f"t{v.id} = r[{i}]" for i, v in enumerate(node.outputs)]
            self.lines.append("r = None")
        for v in node.outputs:
            self.local[v.id] = f"t{v.id}"
            if v.type.numel > 1:
                self.lines += [f"if t{v.id}.stride() != {v.type.strides!r}:",
                               f"    t{v.id} = _fix(t{v.id}, {v.type.shape!r}, {v.type.strides!r})"]

    def free_step(self, step: FreeStep) -> None:
        """Drop the locals of dead roots and of the views materialised from them."""
        inputs = {v.id for v in self.graph.inputs}
        for rid in step.value_ids:
            if rid in inputs and not self.released_inputs:
                self.lines += ["w[1] = True", "inputs.clear()"]
                self.released_inputs = True
            for vid in [rid, *self.views.pop(rid, [])]:
                for table in (self.local, self.ptr):
                    name = table.pop(vid, None)
                    if name is not None and name[0].islower():
                        self.lines.append(f"{name} = None")

    def emit(self) -> str:
        """The whole function's source."""
        for v, position in zip(self.graph.inputs, self.graph.input_positions):
            self.lines.append(f"a{v.id} = inputs[{position}]")
            self.local[v.id] = f"a{v.id}"
        for step in self.plan.steps:
            if isinstance(step, KernelStep):
                self.kernel_step(step)
            elif isinstance(step, ExternStep):
                self.extern_step(step)
            elif isinstance(step, FreeStep):
                self.free_step(step)
            else:
                raise Unsupported(f"plan step {type(step).__name__}")
        self.lines.append(f"return {self.render(self.graph.outputs, self.tensor)}")
        return "def fast(inputs, w):\n" + "".join(f"    {line}\n" for line in self.lines)


def build_fast_path(graph: Graph, plan: Plan, handlers: Any, name: str = "graph") -> FastPath:
    """Generate the fast function of ``plan`` (raises :class:`Unsupported` when it cannot).

    ``handlers`` provides ``fast_kernel_failed(step, exc, inputs, outputs)``,
    ``fast_kernel_slow(step, inputs, outputs)`` and ``fast_template(step, args, kwargs)``.
    """
    emitter = _Emitter(graph, plan, handlers)
    source = emitter.emit()
    code = compile(source, f"<tilewright fast path of {name}>", "exec")
    exec(code, emitter.ns)
    return FastPath(emitter.ns["fast"], source, emitter.kernels, emitter.persistent)
