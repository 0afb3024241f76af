"""The compile pool compiles for real (offline, to an sm_90 cubin through ptxas), gives each compile
its own timeout, and one tuning run or graph compile uses one pool."""
from __future__ import annotations

import pytest
import torch

from .tw_test_kernels import SlowVectorAdd, VectorAdd
from tilewright.autotune import tuner
from tilewright.autotune.compile_pool import CompilePool, compile_session
from tilewright.autotune.database import TuningDatabase
from tilewright.autotune.measure import CudaMeasurer
from tilewright.autotune.search import SearchSettings
from tilewright.frontend.api import tunable_kernels
from tilewright.schedule.space import config_hash

pytest.importorskip("triton.backends.nvidia")


def _generated_kernels() -> list:
    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x * 2 + y, -1) + (x - y).sum(-1, keepdim=True)

    return tunable_kernels(fn, (torch.randn(5, 37), torch.randn(5, 37)))


def test_worker_compiles_to_cubin_and_a_hang_fails_only_its_kernel():
    from tilewright.autotune.compile_pool import precompile_graph

    kernels = _generated_kernels()
    assert len(kernels) >= 1 and all(hasattr(k, "compile_jobs") for k in kernels)
    slow = SlowVectorAdd(n=64, delay=600.0)
    slow.name, slow.config, slow.broken = "hangs", slow.space.default_config(), None
    pool = CompilePool(workers=2, timeout_s=8.0, target="sm_90")  # start-up is not charged to it
    try:
        errors = precompile_graph([slow, *kernels], pool)
    finally:
        pool.close()
    assert set(errors) == {"hangs"}, errors  # every generated kernel compiled down to a cubin
    assert "compile timeout after 8s" in errors["hangs"]
    assert slow.broken and "timeout" in slow.broken  # the runtime never waits on it
    assert all(k.broken is None for k in kernels)


def test_a_compile_error_in_the_worker_is_data():
    kernel = _generated_kernels()[0]
    good = dict(kernel.config)
    bad = {**good, "num_warps": 3}  # not a power of two: Triton's compiler rejects it
    pool = CompilePool(workers=1, timeout_s=300.0, target="sm_90")
    try:
        errors = pool.compile(kernel, [good, bad])
    finally:
        pool.close()
    assert list(errors) == [config_hash(bad)]


class _FakeGpuMeasurer(CudaMeasurer):
    """CUDA measurer whose compiles run in the pool (offline, sm_90) and whose timings are made up."""

    def __init__(self) -> None:
        super().__init__("sm_90", repeats=1, warmup=0, compile_workers=2, compile_timeout_s=300.0)

    def device_info(self) -> dict:
        from tilewright.schedule.device import device_info

        return {**device_info("cpu"), "name": "fake sm_90"}

    def _time_one(self, kernel, config, repeats):
        return [1e-6 * (1 + int(config.get("num_warps", 1)))]


def test_one_tuning_run_of_several_kernels_starts_one_pool(sqlite_url):
    kernels = [VectorAdd(n=n, fingerprint=f"pool-{n}") for n in (300, 500, 700)]
    pools, procs = CompilePool.pools_started, CompilePool.processes_started
    results = tuner.tune_kernels(kernels, storage_url=sqlite_url, measurer=_FakeGpuMeasurer(), cost_model=None,
                                 progress=False, settings=SearchSettings(trials=3, seed=0, remeasure_rounds=0),
                                 db=TuningDatabase(sqlite_url))
    assert len(results) == 3 and all(r.config is not None for r in results)
    assert CompilePool.pools_started - pools == 1
    assert 1 <= CompilePool.processes_started - procs <= 2


def test_sessions_nest_and_measurers_share_the_session_pool():
    with compile_session(workers=1, timeout_s=60.0, target="sm_90") as outer:
        with compile_session() as inner:
            assert inner is outer
        kernel = VectorAdd(n=100)
        procs = CompilePool.processes_started
        for _ in range(3):  # a fresh measurer per kernel, as choose_config makes them
            assert _FakeGpuMeasurer().prepare(kernel, [kernel.space.default_config()]) == {}
        assert CompilePool.processes_started - procs <= 1


def test_gpu_compile_task_of_a_generated_kernel_pickles_and_launches():
    """On a GPU a worker launches each kernel once; generated kernels do not pickle (IR, closures),
    so the task carries their launch description. Here it is launched in the interpreter."""
    import pickle

    from tilewright.autotune.compile_pool import compile_task, launch_from_spec

    for kernel in _generated_kernels():
        task = pickle.loads(pickle.dumps(compile_task(kernel, kernel.config, "cuda")))
        spec = task.args[0]
        assert spec["fn_name"] in spec["source"] and len(spec["tensors"]) == len(kernel.inputs + kernel.outputs)
        launch_from_spec(spec, "cpu", interpret=True)
