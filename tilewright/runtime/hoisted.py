"""A compiled graph whose parameter-only part runs once and is reused until a parameter changes.

The compiler (``passes/hoist.py``) splits an inference graph into a *hoisted* graph (what
depends only on parameters, buffers and shapes: the batch-norm fold's scales and shifts, weight
casts, rotary tables) and the *main* graph, which reads the hoisted graph's outputs as extra
inputs. :class:`HoistedGraph` runs the hoisted graph on the first call and keeps its outputs;
every later call checks, for each parameter or buffer the hoisted graph reads, that it is the
same tensor object, at the same address (``data_ptr``, which ``p.data = t`` changes) and with
the same ``_version`` (which every in-place write through the tensor or its views bumps: an
optimizer step, ``load_state_dict``, ``with torch.no_grad(): p.mul_(2)``, a BN running-stat
update). Shapes, strides, dtypes and devices are the specialisation's, checked by its guard
before this runs. Any difference recomputes the hoisted graph.

Eager batch norm in train mode writes ``running_mean``/``running_var`` inside the ATen op,
which leaves their version counters alone; the module's ``num_batches_tracked.add_(1)`` does
move its own. So for a buffer that sits in a module's ``_buffers`` beside a
``num_batches_tracked`` (BatchNorm, InstanceNorm with running statistics), that counter is
checked too (:func:`version_companions`, found once with ``gc.get_referrers``).

NOTE: a write through ``p.data`` (``p.data.mul_(2)``) goes to a tensor with its own version
counter, and so does a running-stat update by ``F.batch_norm(..., training=True)`` on buffers
held outside such a module; this check cannot see either (nothing short of reading the data
can). Those need ``TILEWRIGHT_HOIST=0`` or a fresh ``torch.compile``.
"""
from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..ir.graph import Graph, map_values
from .graph import CompiledGraph
from .reference import evaluate_value, run_reference


#: the buffers eager batch norm updates without a version bump, and the counter that moves instead
_RUNNING_STATS, _COUNTER = ("running_mean", "running_var"), "num_batches_tracked"


def version_companions(tensors: Sequence[Any]) -> list[torch.Tensor]:
    """The ``num_batches_tracked`` counters of the modules whose running statistics are among
    ``tensors`` (one scan of the heap; parameters are skipped, they are no running statistic)."""
    buffers = [t for t in tensors if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter)]
    if not buffers:
        return []
    ids = {id(t) for t in buffers}
    found: dict[int, torch.Tensor] = {}
    for ref in gc.get_referrers(*buffers):
        if isinstance(ref, dict) and isinstance(ref.get(_COUNTER), torch.Tensor) and \
                any(id(ref.get(name)) in ids for name in _RUNNING_STATS):
            found[id(ref[_COUNTER])] = ref[_COUNTER]
    return list(found.values())


def _make_check(positions: Sequence[int], companions: int) -> Callable[[list[Any], list[Any], list[int]], bool]:
    """``check(inputs, c, k)``: each inputs[p] has the id, version and data pointer in ``k``,
    and each companion ``c[j]`` the version and data pointer after them."""
    terms = [f"id(x[{p}]) == k[{3 * i}] and x[{p}]._version == k[{3 * i + 1}] and "
             f"x[{p}].data_ptr() == k[{3 * i + 2}]" for i, p in enumerate(positions)]
    n = 3 * len(positions)
    terms += [f"c[{j}]._version == k[{n + 2 * j}] and c[{j}].data_ptr() == k[{n + 2 * j + 1}]"
              for j in range(companions)]
    source = "def check(x, c, k):\n    return (" + "\n            and ".join(terms or ["True"]) + ")\n"
    ns: dict[str, Any] = {}
    exec(compile(source, "<tilewright hoisted-part check>", "exec"), ns)
    return ns["check"]  # type: ignore[no-any-return]


def reference_runner(graph: Graph) -> Callable[[list[Any]], Any]:
    """Run ``graph`` op by op with its torch ops (the hoisted graph's whole-graph fallback)."""

    def run(inputs: list[Any]) -> Any:
        env: dict[int, torch.Tensor] = {v.id: inputs[p] for v, p in zip(graph.inputs, graph.input_positions)}
        env.update({c.id: c.constant for c in graph.constants})  # type: ignore[misc]
        with torch.no_grad():
            run_reference(graph.nodes, env)
        return map_values(graph.outputs, lambda v: evaluate_value(v, env))

    return run


class HoistedGraph:
    """Callable running ``main`` with ``hoisted``'s cached outputs appended to its inputs.

    ``positions``: where (among the caller's arguments) the hoisted graph's inputs are;
    ``stats``: the report's ``hoisted`` entry, whose ``recomputed`` count this keeps current.
    """

    def __init__(self, main: CompiledGraph, hoisted: CompiledGraph, positions: Sequence[int],
                 stats: dict[str, Any]) -> None:
        self.main = main
        self.hoisted = hoisted
        self.positions = list(positions)
        self.stats = stats
        self._check: Callable[[list[Any], list[Any], list[int]], bool] = _make_check(self.positions, 0)
        #: weak references to the tensors the cached values were computed from: one dying
        #: invalidates the cache (so its id, in the key, cannot be taken by a new tensor unseen),
        #: and the cache keeps no parameter alive
        self._refs: list[weakref.ref[Any]] = []
        #: the version companions (``num_batches_tracked`` counters) of those tensors
        self._companions: list[torch.Tensor] = []
        #: id, version and data pointer of each tensor, then version and pointer of each companion
        self._key: list[int] = []
        self._cached: list[Any] = []
        self._valid = False

    # the CompiledGraph interface the frontend and the CUDA-graph runner use
    @property
    def report(self) -> Any:
        """The graph's explain report (shared by both parts)."""
        return self.main.report

    @property
    def broken(self) -> str | None:
        """Why the graph runs eagerly (None: it runs its plan)."""
        return self.main.broken

    def __call__(self, inputs: Sequence[Any]) -> Any:
        return self.run_boxed(list(inputs))

    def run_boxed(self, inputs: list[Any]) -> Any:
        """Run on ``inputs`` (a list the graph owns, cleared as inputs die)."""
        if not (self._valid and self._check(inputs, self._companions, self._key)):
            self._refresh(inputs)
        inputs.extend(self._cached)
        return self.main.run_boxed(inputs)

    def invalidate(self, *_: Any) -> None:
        """Forget the cached values (the next call recomputes them)."""
        self._valid = False
        self._cached = []

    def _refresh(self, inputs: list[Any]) -> None:
        """Run the hoisted graph on the current parameters and keep its outputs and their key."""
        self._valid = False
        params = [inputs[p] for p in self.positions]
        if len(params) != len(self._refs) or any(r() is not t for r, t in zip(self._refs, params)):
            # new tensors: watch them die, and find their counters
            invalidate = weakref.WeakMethod(self.invalidate)
            self._refs = [weakref.ref(t, lambda _, m=invalidate: _call(m)) for t in params]
            self._companions = version_companions(params)
            self._check = _make_check(self.positions, len(self._companions))
        # NOTE: the previous values stay alive until the new ones exist, so no new value can take
        # an old one's address: a kernel caching work per (data_ptr, _version) of an input (the CPU
        # convolution's packed weights) sees a new key
        with torch.no_grad():  # cached values never carry autograd history
            outs = self.hoisted.run_boxed(list(params))
        self._cached = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        self.stats["recomputed"] = self.stats.get("recomputed", 0) + 1
        if any(t.is_inference() for t in params):  # no version counter: recomputed on every call
            return
        # the key is of the tensors the values were computed from (the hoisted graph never writes them)
        key = [n for t in params for n in (id(t), t._version, t.data_ptr())]
        self._key = key + [n for t in self._companions for n in (t._version, t.data_ptr())]
        self._valid = True


def _call(method: Any) -> None:
    """Call a weakly referenced method if its object is still alive."""
    bound = method()
    if bound is not None:
        bound()
