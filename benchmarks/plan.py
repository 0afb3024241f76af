"""The ordered work list of a suite run: items with priorities and cost estimates.

Items are listed in priority order: correctness first, then the timings that matter most
(float16 kernels, bfloat16 model inference), then training steps, other dtypes, tuned configs,
warm-cache compiles and max-autotune last. The runner walks the list and skips what no longer
fits the budget, recording the reason.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from .cases import KERNEL_CASES, MODEL_CASES, KernelCase

#: Phases: ``correctness`` (eager and tilewright vs float64), ``timing`` (one system),
#: ``compile`` (pipeline time: first call minus second call, and explain's phase timings).
PHASES = ("correctness", "timing", "compile")


@dataclass(frozen=True)
class Item:
    """One unit of work; its ``key`` names it in the results."""

    phase: str
    case: str
    category: str
    dtype: str
    train: bool
    system: str
    estimate_s: float

    @property
    def key(self) -> str:
        """Stable identifier, e.g. ``timing/kernel/softmax/float16/infer/inductor``."""
        mode = "train" if self.train else "infer"
        return f"{self.phase}/{self.category}/{self.case}/{self.dtype}/{mode}/{self.system}"

    @property
    def kind(self) -> str:
        """What the budget learns cost ratios by, e.g. ``model/correctness`` or ``kernel/inductor``."""
        what = self.phase if self.phase != "timing" else self.system.split(":")[0]
        return f"{self.category}/{what}/{'train' if self.train else 'infer'}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (the key included)."""
        return {"key": self.key, **asdict(self)}


# Rough GPU costs in seconds (compile + checks/timing); the budget learns the real ratio.
_GPU_COST = {
    ("kernel", "correctness"): 4.0, ("kernel", "eager"): 1.0, ("kernel", "vendor"): 4.0,
    ("kernel", "tilewright"): 3.0, ("kernel", "tilewright_tuned"): 20.0, ("kernel", "inductor"): 6.0,
    ("kernel", "inductor_max_autotune"): 40.0,
    ("model", "correctness"): 25.0, ("model", "eager"): 3.0, ("model", "tilewright"): 20.0,
    ("model", "tilewright_tuned"): 120.0, ("model", "inductor"): 45.0, ("model", "inductor_max_autotune"): 240.0,
    ("model", "compile"): 60.0,
}
# CPU mode (interpreter, tiny sizes, Inductor's C++ compile).
_CPU_COST = {
    ("kernel", "correctness"): 2.0, ("kernel", "eager"): 0.3, ("kernel", "vendor"): 1.0,
    ("kernel", "tilewright"): 2.0, ("kernel", "tilewright_tuned"): 10.0, ("kernel", "inductor"): 6.0,
    ("kernel", "inductor_max_autotune"): 30.0,
    ("model", "correctness"): 8.0, ("model", "eager"): 0.5, ("model", "tilewright"): 8.0,
    ("model", "tilewright_tuned"): 60.0, ("model", "inductor"): 25.0, ("model", "inductor_max_autotune"): 120.0,
    ("model", "compile"): 25.0,
}


def _cost(cpu: bool, category: str, key: str, train: bool) -> float:
    if key.startswith("vendor:"):
        key = "vendor"
    table = _CPU_COST if cpu else _GPU_COST
    base = table.get((category, key), 10.0)
    return base * (2.0 if train else 1.0)


def _kernels(names: set[str] | None) -> list[KernelCase]:
    return [c for c in KERNEL_CASES if names is None or c.name in names]


def _models(names: set[str] | None) -> list[str]:
    return [c.name for c in MODEL_CASES if names is None or c.name in names]


def build_plan(cpu: bool, cases: Iterable[str] | None = None, dtypes: Iterable[str] | None = None,
               systems: Iterable[str] | None = None, train: bool = True) -> list[Item]:
    """The priority-ordered items of a GPU run (``cpu=False``) or a CPU run.

    Args:
        cpu: CPU mode (small sizes, interpreter; correctness and compile-pipeline time).
        cases: restrict to these case names (default: all).
        dtypes: restrict to these dtype names (default: the mode's dtypes).
        systems: restrict timing/compile items to these systems (correctness always runs).
        train: include training-step items.
    """
    names = set(cases) if cases else None
    allowed_dtypes = set(dtypes) if dtypes else None
    allowed_systems = set(systems) if systems else None
    kdtypes = ("float32", "float16") if cpu else ("float16", "bfloat16", "float32")
    mdtype = "float32" if cpu else "bfloat16"
    items: list[Item] = []

    def add(phase: str, category: str, case: str, dtype: str, is_train: bool, system: str) -> None:
        if allowed_dtypes is not None and dtype not in allowed_dtypes:
            return
        if phase != "correctness" and allowed_systems is not None and system not in allowed_systems:
            return
        if is_train and not train:
            return
        est = _cost(cpu, category, "correctness" if phase == "correctness" else (
            "compile" if phase == "compile" and category == "model" else system), is_train)
        items.append(Item(phase, case, category, dtype, is_train, system, est))

    def time_kernels(dtype: str, kernel_systems: tuple[str, ...], vendors: bool) -> None:
        for case in _kernels(names):
            for system in kernel_systems:
                add("timing", "kernel", case.name, dtype, False, system)
            if vendors:
                for vendor in case.vendor:
                    add("timing", "kernel", case.name, dtype, False, f"vendor:{vendor}")

    def time_models(is_train: bool, model_systems: tuple[str, ...]) -> None:
        for model in _models(names):
            for system in model_systems:
                add("timing", "model", model, mdtype, is_train, system)

    # 1. Correctness of every kernel in every dtype, then models (inference, then training).
    for dtype in kdtypes:
        for case in _kernels(names):
            add("correctness", "kernel", case.name, dtype, False, "tilewright")
    if cpu:
        # CPU: per model, tilewright's check (its first call, cold, reports the pipeline phases)
        # and Inductor's compile time on the same model; then training checks and
        # interpreter-mode kernel timings last.
        for model in _models(names):
            add("correctness", "model", model, mdtype, False, "tilewright")
            add("compile", "model", model, mdtype, False, "inductor")
        for model in _models(names):
            add("correctness", "model", model, mdtype, True, "tilewright")
        time_kernels("float32", ("eager", "tilewright", "inductor"), vendors=False)
        return items
    for model in _models(names):
        add("correctness", "model", model, mdtype, False, "tilewright")
    base = ("eager", "tilewright", "inductor")
    # 2. The headline timings: float16 kernels, bfloat16 model inference.
    time_kernels("float16", base, vendors=True)
    time_models(False, base)
    # 3. Training steps: correctness, then timings.
    for model in _models(names):
        add("correctness", "model", model, mdtype, True, "tilewright")
    time_models(True, base)
    # 4. Other dtypes for kernels.
    time_kernels("bfloat16", base, vendors=True)
    time_kernels("float32", base, vendors=False)
    # 5. Tuned configs from the database (tuning misses at compile time).
    time_kernels("float16", ("tilewright_tuned",), vendors=False)
    time_models(False, ("tilewright_tuned",))
    # 6. Warm-cache compile times of the models (cold ones come from steps 1-3).
    for model in _models(names):
        for system in ("tilewright", "inductor"):
            add("compile", "model", model, mdtype, False, system)
    # 7. Max-autotune last: the most expensive baseline.
    time_kernels("float16", ("inductor_max_autotune",), vendors=False)
    time_models(False, ("inductor_max_autotune",))
    return items
