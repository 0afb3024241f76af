"""The compiled callable: runs a :class:`~tilewright.runtime.plan.Plan`'s kernels, extern ATen
calls and view aliases in order (target-independent: kernels are launched through
:class:`~tilewright.schedule.kernel.Kernel`, templates through their runner).

Fallbacks, each logged once, reported in explain (the kernel's status) and counted out of
coverage — or raised as :class:`~tilewright.errors.StrictModeError` in strict mode:

- a generated kernel that fails to compile or launch runs its group's reference ops;
- ``verify`` compares each kernel with its reference on its first run; a mismatch is a fallback;
- a template (fused attention, convolution gradients) that fails runs its torch reference;
- anything else that fails before the graph has written into its inputs makes the whole graph
  run eagerly (the FX graph it was compiled from).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from ..config import config
from ..errors import KernelIndexError, StrictModeError
from ..ir.graph import Graph, Node, Value, map_values
from ..ir.registry import lookup
from ..report import GraphReport, mark_fell_back, mark_ran
from ..schedule.kernel import Kernel
from .fastpath import FastPath, build_fast_path
from .fastpath import settings as fast_settings
from .plan import ExternStep, KernelStep, Plan, root_value
from .reference import evaluate_value, run_reference

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def strict_failure(what: str, ops: Any, cause: str) -> StrictModeError:
    """The error strict mode raises for a fallback of ``what`` (kernel name, fused ops, cause)."""
    return StrictModeError(f"{what} would fall back to its reference (strict mode is on): {cause}; "
                           f"fused ops: {', '.join(sorted(set(ops))) or '-'}. Turn off tilewright.config.strict "
                           f"(TILEWRIGHT_STRICT=0) to let it fall back and report it instead.")


class CompiledGraph:
    """Callable running one specialised graph.

    ``eager`` (the FX graph the plan was compiled from) runs the whole graph when a step fails
    outside any kernel's own fallback — only while nothing has been written into the inputs yet,
    so a retry can never apply an in-place update twice.
    """

    def __init__(self, graph: Graph, plan: Plan, report: GraphReport, eager: Any = None) -> None:
        self.graph = graph
        self.plan = plan
        self.report = report
        self.eager = eager
        #: why the graph runs eagerly from now on (None: it runs its plan)
        self.broken: str | None = None
        #: view values by the buffer they alias (built on first use; None until then)
        self._views_by_root: dict[int, list[int]] | None = None
        #: the generated straight-line function normal calls run (built after a first general run)
        self.fast: FastPath | None = None
        #: why there is no fast path (the plan has something it does not generate)
        self._fast_unsupported: str | None = None
        #: the CUDA device the graph's tensors live on: kernels launch on the current device, so
        #: a call from another current device switches to it first (None: not a CUDA graph)
        self.cuda_index = cuda_index(graph)

    def __call__(self, inputs: Sequence[Any]) -> Any:
        return self._call(list(inputs))

    def run_boxed(self, inputs: list[Any]) -> Any:
        """Run on ``inputs``, a list the graph owns: the fast path clears it once an input is dead
        (so an input's memory can go after its last use; AOTAutograd's boxed convention)."""
        return self._call(inputs)

    def _call(self, inputs: list[Any]) -> Any:
        index = self.cuda_index
        if index is not None and torch.cuda.current_device() != index:
            with torch.cuda.device(index):
                return self._call_here(inputs)
        return self._call_here(inputs)

    def _call_here(self, inputs: list[Any]) -> Any:
        if self.broken is not None and self.eager is not None:
            return self.eager(inputs)
        # [wrote into an input, released an input]: either forbids an eager retry
        flags = [False, False]
        fast = self.fast
        try:
            if fast is not None and fast_settings.enabled and (not config.verify or fast.verified):
                return fast.fn(inputs, flags)
            result = self._run_plan(inputs, flags)
        except StrictModeError:
            raise
        except Exception as exc:
            if self.eager is None or flags[0] or flags[1]:
                raise
            return self._retry_eagerly(inputs, exc)
        if fast_settings.enabled and self._fast_unsupported is None and (fast is None or not fast.verified):
            self._build_fast_path()
        return result

    def _retry_eagerly(self, inputs: list[Any], exc: Exception) -> Any:
        # the graph as the user wrote it: if it fails too, the error is the program's own
        # (a singular matrix, a bad index) and propagates as eager's; otherwise it was ours
        result = self.eager(inputs)
        cause = _first_line(exc)
        if config.strict:
            raise strict_failure(f"graph {self.report.name}", [], f"a step failed at run time ({cause})") from exc
        self.broken = cause
        self.fast = None
        log.warning("tilewright graph %s failed at run time (%s); it runs eagerly from now on",
                    self.report.name, cause)
        self.report.add_fallback(f"graph {self.report.name}", f"failed at run time: {cause}")
        self.report.mode = "eager (run failed)"
        for entry in self.report.kernels:
            mark_fell_back(entry, f"graph runs eagerly: {cause}")
        return result

    def _build_fast_path(self) -> None:
        """Generate the fast path after a successful general run (once; again after verify)."""
        try:
            self.fast = build_fast_path(self.graph, self.plan, self, self.report.name)
        except Exception as exc:  # the interpreter keeps running the graph
            self.fast = None
            self._fast_unsupported = _first_line(exc)
            log.debug("graph %s has no fast path: %s", self.report.name, self._fast_unsupported)

    # -- the fast path's handlers (unusual cases of one step) ----------------------------
    def fast_kernel_failed(self, step: KernelStep, exc: Exception, args: list[Any], outs: list[Any]) -> None:
        """A launch on the fast path raised: the kernel falls back (strict mode: raises)."""
        if isinstance(exc, KernelIndexError):  # a bad index in the inputs: the program's error
            raise exc
        self._fall_back(step.kernel, step.entry, _first_line(exc))
        self._copy_reference(step, args, outs)

    def fast_kernel_slow(self, step: KernelStep, args: list[Any], outs: list[Any]) -> None:
        """A broken kernel (its reference runs), or one whose config changed since the fast path
        was built (launched with its own ``launch``; the fast path is rebuilt)."""
        kernel = step.kernel
        if kernel.broken is None:
            self.fast = None
            try:
                kernel.launch(args + outs)
                return
            except KernelIndexError:
                raise
            except Exception as exc:
                self._fall_back(kernel, step.entry, _first_line(exc))
        self._copy_reference(step, args, outs)

    def _copy_reference(self, step: KernelStep, args: list[Any], outs: list[Any]) -> None:
        env = dict(zip([v.id for v in step.inputs], args))
        ref = self._reference(step, env)
        for o, v in zip(outs, step.outputs):
            o.copy_(ref[v.id])

    def fast_template(self, step: ExternStep, args: Any, kwargs: dict[str, Any]) -> Any:
        """A template step's result on the fast path (its own fallback included)."""
        return self._template_result(step, args, kwargs)

    def _run_plan(self, inputs: Sequence[Any], wrote_inputs: list[bool]) -> Any:
        env: dict[int, torch.Tensor] = {}
        for v, position in zip(self.graph.inputs, self.graph.input_positions):
            env[v.id] = inputs[position]
        for v in self.graph.constants:
            env[v.id] = v.constant  # type: ignore[assignment]
        slots: dict[int, torch.Tensor] = {}
        for step in self.plan.steps:
            if isinstance(step, KernelStep):
                wrote_inputs[0] = wrote_inputs[0] or bool(step.inplace)
                self._run_kernel(step, env, slots)
            elif isinstance(step, ExternStep):
                if step.call is not None:
                    self._run_template(step, env)
                else:
                    self._run_extern(step.node, env)
            else:
                for vid in step.value_ids:
                    env.pop(vid, None)
                self._drop_views(step.value_ids, env)
        return map_values(self.graph.outputs, lambda v: evaluate_value(v, env))

    def _drop_views(self, root_ids: list[int], env: dict[int, torch.Tensor]) -> None:
        if self._views_by_root is None:  # NOTE: an empty map is a valid answer (a graph without views)
            self._views_by_root = {}
            for node in self.graph.nodes:
                if lookup(node.target).kind == "view":
                    for o in node.outputs:
                        self._views_by_root.setdefault(root_value(o).id, []).append(o.id)
        for rid in root_ids:
            for vid in self._views_by_root.get(rid, []):
                env.pop(vid, None)

    def _alloc(self, v: Value, slot: int, slots: dict[int, torch.Tensor]) -> torch.Tensor:
        t = v.type
        if slot < 0:
            return torch.empty_strided(t.shape, t.strides, dtype=t.dtype, device=t.device)
        storage = slots.get(slot)
        if storage is None:
            storage = torch.empty(max(self.plan.slot_bytes[slot], 1), dtype=torch.uint8, device=t.device)
            slots[slot] = storage
        return storage.view(t.dtype)[: max(1, self.plan.slot_bytes[slot] // t.dtype.itemsize)].as_strided(
            t.shape, t.strides) if t.numel else torch.empty_strided(t.shape, t.strides, dtype=t.dtype, device=t.device)

    def _fall_back(self, kernel: Any, entry: dict[str, Any] | None, cause: str) -> None:
        """Mark ``kernel`` broken (its reference runs from now on), or raise in strict mode."""
        ops = list(kernel.ops)
        if config.strict:
            raise strict_failure(f"kernel {kernel.name}", ops, cause)
        kernel.broken = cause
        log.warning("kernel %s failed (%s); running its reference ops %s instead", kernel.name, cause,
                    sorted(set(ops)))
        self.report.add_fallback(f"kernel {kernel.name}", f"kernel failed: {cause}")
        mark_fell_back(entry, cause)

    def _run_kernel(self, step: KernelStep, env: dict[int, torch.Tensor], slots: dict[int, torch.Tensor]) -> None:
        kernel = step.kernel
        args = [evaluate_value(v, env) for v in step.inputs]
        outs = [evaluate_value(step.inplace[v.id], env) if s == -2 else self._alloc(v, s, slots)
                for v, s in zip(step.outputs, step.slots)]
        if kernel.broken is None:
            try:
                kernel.launch(args + outs)
            except KernelIndexError:  # a bad index in the inputs: the program's error (eager raises it)
                raise
            except Exception as exc:  # compile or launch failure: reference from now on
                self._fall_back(kernel, step.entry, _first_line(exc))
        if kernel.broken is not None:
            ref = self._reference(step, env)
            for o, v in zip(outs, step.outputs):
                o.copy_(ref[v.id])
        else:
            if config.verify and not kernel.verified:
                kernel.verified = True
                ref = self._reference(step, env)
                mismatch = next((m for m in (self._check(kernel, v, o, ref[v.id])
                                             for o, v in zip(outs, step.outputs)) if m), None)
                if mismatch is not None:  # this call uses the reference results too
                    self._fall_back(kernel, step.entry, f"verify mismatch: {mismatch}")
                    for o, v in zip(outs, step.outputs):
                        o.copy_(ref[v.id])
            if kernel.broken is None:
                mark_ran(step.entry)
        for o, v in zip(outs, step.outputs):
            env[v.id] = o

    def _reference(self, step: KernelStep, env: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        local = dict(env)
        run_reference(step.kernel.nodes, local)
        return {v.id: local[v.id] for v in step.outputs}

    def _check(self, kernel: Kernel, v: Value, got: torch.Tensor, want: torch.Tensor) -> str | None:
        """None when ``got`` matches the reference ``want``, else a description of the mismatch."""
        rtol, atol = verify_tolerance(kernel, got)
        ok = torch.allclose(got.float(), want.float(), rtol=rtol, atol=atol, equal_nan=True) \
            if got.is_floating_point() else torch.equal(got, want)
        if ok:
            return None
        err = (got.float() - want.float()).abs().max().item() if got.is_floating_point() else float("nan")
        msg = (f"kernel {kernel.name} output %{v.name} differs from its reference "
               f"(max abs error {err:.3g}); fused ops: {', '.join(kernel.ops)}")
        log.error(msg)
        return msg

    def _run_template(self, step: ExternStep, env: dict[int, torch.Tensor]) -> None:
        args = map_values(step.node.args, lambda a: evaluate_value(a, env))
        kwargs = map_values(step.node.kwargs, lambda a: evaluate_value(a, env))
        self._store(step.node, self._template_result(step, args, kwargs), env)

    def _template_result(self, step: ExternStep, args: Any, kwargs: dict[str, Any]) -> Any:
        assert step.call is not None
        if step.broken is None:
            try:
                result = step.call.run_kernel(args, kwargs)
            except Exception as exc:  # the template's kernels failed: its reference from now on
                cause = _first_line(exc)
                if config.strict:
                    raise strict_failure(f"template {step.node.op}", [step.node.op], cause) from exc
                step.call.on_kernel_failure(tuple(args), kwargs)
                step.broken = cause
                log.warning("template %s failed (%s); running its reference instead", step.node.op, cause)
                self.report.add_fallback(f"template {step.node.op}", f"kernel failed: {cause}")
                mark_fell_back(step.entry, cause)
            else:
                mark_ran(step.entry)
                return result
        return step.call.reference(*args, **kwargs)

    def _run_extern(self, node: Node, env: dict[int, torch.Tensor]) -> None:
        args = map_values(node.args, lambda a: evaluate_value(a, env))
        kwargs = map_values(node.kwargs, lambda a: evaluate_value(a, env))
        self._store(node, node.target(*args, **kwargs), env)

    def _store(self, node: Node, result: Any, env: dict[int, torch.Tensor]) -> None:
        if not node.outputs:
            return
        outs = [r for r in result if isinstance(r, torch.Tensor)] if isinstance(result, (list, tuple)) else [result]
        for v, t in zip(node.outputs, outs):
            if isinstance(t, torch.Tensor) and tuple(t.stride()) != v.type.strides and t.numel() > 1:
                # keep the layout the plan was built for
                fixed = torch.empty_strided(v.type.shape, v.type.strides, dtype=t.dtype, device=t.device)
                fixed.copy_(t)
                t = fixed
            env[v.id] = t


def cuda_index(graph: Graph) -> int | None:
    """The index of the CUDA device ``graph``'s tensors are on (None when none is on CUDA)."""
    for v in list(graph.inputs) + list(graph.output_values()):
        device = v.type.device
        if device.type == "cuda":
            return device.index if device.index is not None else torch.cuda.current_device()
    return None


def verify_tolerance(kernel: Any, got: torch.Tensor) -> tuple[float, float]:
    """(rtol, atol) for comparing ``kernel``'s output with its reference under ``verify``.

    float32 outputs of kernels that contain a matmul or convolution on a GPU are judged at TF32
    precision when torch lets cuBLAS/cuDNN use TF32 (the reference then runs in TF32 too, so
    the two may differ by TF32 rounding); half types get a wider tolerance.
    """
    scale = 1.0 if got.dtype in (torch.float32, torch.float64) else 50.0
    if got.dtype == torch.float32 and got.device.type == "cuda" and _uses_tf32(kernel):
        scale = 50.0
    return config.verify_rtol * scale, config.verify_atol * scale


def _uses_tf32(kernel: Any) -> bool:
    kind = kernel.kind
    if kind == "conv":
        return bool(torch.backends.cudnn.allow_tf32)
    if kind == "matmul":
        from ..schedule.precision import fp32_matmul_policy

        chosen = getattr(kernel, "config", None) or {}
        if "PRECISION" in chosen and not chosen.get("extern"):
            return chosen["PRECISION"] == "tf32"  # tf32x3 stays within float32 tolerances
        return fp32_matmul_policy() == "tf32"  # cuBLAS follows torch's flags
    return False
