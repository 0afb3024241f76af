"""Worker processes that compile kernels for real, each compile under its own timeout.

:class:`CompilePool` keeps up to ``workers`` spawned processes, hands each one compile at a time
and kills (then replaces) a worker whose compile runs past ``timeout_s``: that config is
reported as failed and every other compile carries on. What "compile" means depends on the
pool's ``target``:

* ``"cuda"`` (a GPU is present): the worker launches the kernel once on fresh inputs, so Triton
  compiles exactly the specialisation the timing process and the runtime will launch, and
  writes it to Triton's on-disk cache; the parent then loads the binary instead of compiling.
* ``"sm_<N>"`` (no GPU, e.g. ``"sm_90"``): kernels that expose ``compile_jobs(config)`` (the
  generated Triton kernels) are compiled offline to a cubin for that architecture, ptxas
  included (:mod:`tilewright.targets.triton.cross_compile`), and a config whose shared memory
  exceeds the architecture's is reported as failed; other kernels only build their runner
  (validates the config).

Workers never run in Triton's interpreter (the interpreter variables are removed from their
environment). :func:`compile_session` makes every measurer and the compiler's first-run
precompile share one pool (one set of worker processes per tuning run or model compile).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..schedule.space import Config, config_hash

log = logging.getLogger(__name__)

__all__ = ["CompilePool", "compile_session", "active_pool", "compile_task", "template_task", "precompile_kernels",
           "precompile_graph", "SHARED_MEMORY_LIMIT"]

#: bytes of shared memory one block may use, by CUDA architecture (opt-in maximum)
SHARED_MEMORY_LIMIT = {70: 98304, 75: 65536, 80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}
_INTERPRETER_VARS = ("TRITON_INTERPRET", "TILEWRIGHT_INTERPRET")
_ENV_LOCK = threading.Lock()
_READY = "__ready__"
#: how long a fresh worker may take to import torch and Triton (a loaded machine is slow)
STARTUP_TIMEOUT_S = 300.0


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 2000 else text[:2000] + "..."


# -- what a worker runs ------------------------------------------------------------------------

def _compile_offline(jobs: Sequence[Any], arch: int) -> str | None:
    """Compile ``jobs`` (cross_compile.CompileJob) for ``sm_<arch>``; an error or None."""
    from ..targets.triton.cross_compile import compile_and_check

    limit = SHARED_MEMORY_LIMIT.get(arch)
    for job in jobs:
        info = compile_and_check(job, arch)
        if not info["cubin_bytes"]:
            return f"{job.name} compiled to no sm_{arch} machine code"
        if limit is not None and info["shared"] > limit:
            return (f"{job.name} needs {info['shared']} bytes of shared memory; sm_{arch} allows {limit} "
                    f"per block (smaller tiles or fewer stages)")
    return None


def _compile_template_offline(launch: Any, arch: int) -> str | None:
    """Record the kernel launches of a template call (attention.precompile.TemplateLaunch) as an
    ``sm_<arch>`` device would see them, then compile each for that architecture."""
    jobs = launch.compile_jobs(arch, SHARED_MEMORY_LIMIT.get(arch))
    if not jobs:
        return f"{launch.name} launched no kernel"
    return _compile_offline(jobs, arch)


def _launch_template_once(launch: Any, device: str) -> str | None:
    launch.launch(device)
    return None


def template_task(launch: Any, target: str) -> Callable[[], str | None]:
    """The picklable work that compiles a template call's kernels (a ``TemplateLaunch``) for
    ``target`` in a worker: launched once on the GPU, or recorded and compiled offline."""
    if target.startswith("sm_"):
        return functools.partial(_compile_template_offline, launch, int(target[3:]))
    return functools.partial(_launch_template_once, launch, target)


def _launch_once(kernel: Any, config: Config, device: str) -> str | None:
    """Launch ``kernel`` once under ``config`` on fresh inputs: Triton compiles and caches it."""
    import torch

    launch = kernel.runner(config)
    launch(kernel.make_inputs(device))
    torch.cuda.synchronize(device)
    return None


def launch_from_spec(spec: Mapping[str, Any], device: str, interpret: bool = False) -> None:
    """Rebuild a generated kernel from :meth:`GeneratedKernel.launch_spec` and launch it once on
    fresh tensors of the recorded shapes, strides and dtypes (what the runtime launches)."""
    import torch

    from ..targets.triton.loader import load_kernel

    fn = load_kernel(spec["source"], spec["fn_name"], interpret=interpret)
    tensors = []
    for shape, strides, dtype_name in spec["tensors"]:
        dtype = getattr(torch, dtype_name)
        span = 1 + sum((n - 1) * st for n, st in zip(shape, strides) if n > 0)
        flat = (torch.randn(span, device=device).to(dtype) if dtype.is_floating_point
                else torch.zeros(span, dtype=dtype, device=device))
        tensors.append(flat.as_strided(shape, strides))
    fn[tuple(spec["grid"])](*tensors, **spec["kwargs"])
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _launch_spec_once(spec: Mapping[str, Any], device: str) -> str | None:
    launch_from_spec(spec, device)
    return None


def _build_runner(kernel: Any, config: Config) -> str | None:
    kernel.runner(config)
    return None


def compile_task(kernel: Any, config: Config, target: str) -> Callable[[], str | None]:
    """The picklable work that compiles ``kernel`` under ``config`` for ``target`` in a worker."""
    if target.startswith("sm_") and hasattr(kernel, "compile_jobs"):
        return functools.partial(_compile_offline, kernel.compile_jobs(config), int(target[3:]))
    if target.startswith("cuda"):
        spec = kernel.launch_spec(config) if hasattr(kernel, "launch_spec") else None
        if spec is not None:  # generated kernels do not pickle; their launch description does
            return functools.partial(_launch_spec_once, spec, target)
        return functools.partial(_launch_once, kernel, dict(config), target)
    return functools.partial(_build_runner, kernel, dict(config))


def _serve(conn: Any) -> None:
    """Worker main loop: receive (key, pickled work), run it, send (key, error or None).

    It first imports the compiler and says so: start-up is not charged to a compile's timeout.
    """
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(Exception):
        import torch  # noqa: F401
        import triton  # noqa: F401
    conn.send((_READY, None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        key, payload = message
        try:
            error = pickle.loads(payload)()
        except BaseException as exc:  # noqa: BLE001 - a failed compile is data for the parent
            error = _short_error(exc)
        conn.send((key, error))


# -- the pool ------------------------------------------------------------------------------------

@dataclass
class _Worker:
    process: Any
    conn: Any
    key: str | None = None
    started: float = 0.0
    ready: bool = False

    def deadline(self, timeout_s: float) -> float:
        return self.started + (timeout_s if self.ready else max(timeout_s, STARTUP_TIMEOUT_S))


@contextlib.contextmanager
def _compiler_env() -> Iterator[None]:
    """os.environ without the interpreter switches while a worker is spawned (it copies it)."""
    with _ENV_LOCK:
        saved = {k: os.environ.pop(k) for k in _INTERPRETER_VARS if k in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


class CompilePool:
    """Spawned worker processes compiling one config each, every compile with its own timeout.

    Args:
        workers: worker processes (started on demand, at most this many).
        timeout_s: how long one compile may take; past it the worker is killed and replaced.
        target: ``"cuda"``/``"cuda:N"`` (launch once, warming Triton's cache), ``"sm_<N>"``
            (offline compile to a cubin), or None: CUDA when a GPU is present, else ``"sm_90"``.

    Not thread safe. Work that cannot be pickled is compiled in-process (no timeout), logged.
    """

    #: worker processes started by every pool of this process (tests count them)
    processes_started = 0
    #: pools that started at least one worker
    pools_started = 0

    def __init__(self, workers: int = 4, timeout_s: float = 120.0, target: str | None = None):
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self.target = target or _default_target()
        self._idle: list[_Worker] = []
        self._started_any = False

    def __getstate__(self) -> dict[str, Any]:
        return {"workers": self.workers, "timeout_s": self.timeout_s, "target": self.target, "_idle": [],
                "_started_any": False}

    def _spawn(self) -> _Worker:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        with _compiler_env():
            process = ctx.Process(target=_serve, args=(child,), daemon=True, name="tilewright-compile")
            process.start()
        child.close()
        CompilePool.processes_started += 1
        if not self._started_any:
            self._started_any = True
            CompilePool.pools_started += 1
        return _Worker(process, parent)

    @staticmethod
    def _kill(worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()

    def close(self) -> None:
        """Stop the idle workers (busy ones are never left behind: :meth:`run` waits or kills)."""
        idle, self._idle = self._idle, []
        for worker in idle:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
            worker.process.join(timeout=2)
            self._kill(worker)

    def run(self, work: Mapping[str, Callable[[], str | None]]) -> dict[str, str]:
        """Run every ``key -> work`` item in the workers; {key: error} for those that failed."""
        errors: dict[str, str] = {}
        pending: collections.deque[tuple[str, bytes]] = collections.deque()
        for key, fn in work.items():
            try:
                pending.append((key, pickle.dumps(fn)))
            except Exception as exc:  # noqa: BLE001 - compile here instead, without a timeout
                log.info("compile work %s cannot be sent to a worker (%s); compiling in-process", key, exc)
                try:
                    err = fn()
                except Exception as inner:  # noqa: BLE001 - failure as data
                    err = _short_error(inner)
                if err:
                    errors[key] = err
        busy: list[_Worker] = []
        while pending or busy:
            while pending and (self._idle or len(busy) < self.workers):
                worker = self._idle.pop() if self._idle else self._spawn()
                worker.key, payload = pending.popleft()
                worker.started = time.monotonic()
                worker.conn.send((worker.key, payload))
                busy.append(worker)
            deadline = min(w.deadline(self.timeout_s) for w in busy)
            ready = multiprocessing.connection.wait([w.conn for w in busy],
                                                    timeout=max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            for worker in list(busy):
                if worker.conn in ready:
                    try:
                        key, err = worker.conn.recv()
                    except (EOFError, OSError):
                        worker.process.join(timeout=5)
                        errors[str(worker.key)] = f"compile worker died (exit code {worker.process.exitcode})"
                        busy.remove(worker)
                        self._kill(worker)
                        continue
                    if key == _READY:  # start-up done: the compile's clock starts now
                        worker.ready, worker.started = True, time.monotonic()
                        continue
                    if err:
                        errors[key] = err
                    busy.remove(worker)
                    self._idle.append(worker)
                elif now >= worker.deadline(self.timeout_s):
                    what = "compile" if worker.ready else "compile worker start-up"
                    log.warning("%s of %s timed out; its worker is replaced", what, worker.key)
                    errors[str(worker.key)] = (f"compile timeout after {self.timeout_s:g}s" if worker.ready else
                                               f"compile worker did not start within {STARTUP_TIMEOUT_S:g}s")
                    busy.remove(worker)
                    self._kill(worker)
        return errors

    def compile(self, kernel: Any, configs: Sequence[Config]) -> dict[str, str]:
        """Compile ``configs`` of ``kernel``; {config_hash: error} for those that failed or timed out."""
        work: dict[str, Callable[[], str | None]] = {}
        errors: dict[str, str] = {}
        for config in configs:
            try:
                work[config_hash(config)] = compile_task(kernel, config, self.target)
            except Exception as exc:  # noqa: BLE001 - e.g. a config the kernel cannot express
                errors[config_hash(config)] = _short_error(exc)
        errors.update(self.run(work))
        return errors


def _default_target() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "sm_90"


# -- one pool per tuning run / model compile -------------------------------------------------------

_session: list[CompilePool] = []


@contextlib.contextmanager
def compile_session(workers: int = 4, timeout_s: float = 120.0, target: str | None = None) -> Iterator[CompilePool]:
    """Share one :class:`CompilePool` with every measurer and precompile inside the block.

    Nested sessions reuse the outermost pool; the pool's workers stop when it ends.
    """
    if _session:
        yield _session[0]
        return
    pool = CompilePool(workers, timeout_s, target)
    _session.append(pool)
    try:
        yield pool
    finally:
        _session.clear()
        pool.close()


def active_pool() -> CompilePool | None:
    """The pool of the enclosing :func:`compile_session`, if any."""
    return _session[0] if _session else None


def precompile_kernels(kernels: Sequence[Any], pool: CompilePool,
                       extra: Mapping[str, Callable[[], str | None]] | None = None) -> dict[str, str]:
    """Compile every kernel's current config (plus the ``extra`` work, e.g. template launches)
    in parallel in ``pool``; {kernel name or extra key: error}.

    On a GPU this warms Triton's on-disk cache, so the runtime's first call loads binaries
    instead of compiling them one after another.
    """
    work = dict(extra or {})
    errors: dict[str, str] = {}
    for kernel in kernels:
        try:
            work[kernel.name] = compile_task(kernel, kernel.config, pool.target)
        except Exception as exc:  # noqa: BLE001 - reported, the runtime compiles it itself
            errors[kernel.name] = _short_error(exc)
    errors.update(pool.run(work))
    return errors


def _template_work(templates: Sequence[Any], target: str) -> tuple[dict[str, Callable[[], str | None]],
                                                                    dict[str, list[Any]]]:
    """One compile per distinct template launch (layers of one model share theirs): {name: work}
    and {name: the template steps it serves}."""
    work: dict[str, Callable[[], str | None]] = {}
    served: dict[str, list[Any]] = {}
    names: dict[str, str] = {}  # launch key -> the name of its work
    for step in templates:
        describe = getattr(step.call, "precompile_launch", None)
        launch = describe(step.node) if describe is not None and step.broken is None else None
        if launch is None:
            continue
        key = launch.key()
        if key not in names:
            names[key] = launch.name
            work[launch.name] = template_task(launch, target)
            served[launch.name] = []
        served[names[key]].append(step)
    return work, served


def precompile_graph(kernels: Sequence[Any], pool: CompilePool | None = None, templates: Sequence[Any] = (),
                     report: Any = None) -> dict[str, str]:
    """Compile ``kernels`` (their current configs) and the kernels of the ``templates`` steps
    (fused attention: ``ExternStep`` s whose call can describe its launch, with the config bound
    to it) together in ``pool`` (default: the compile session's, else a pool sized by
    ``config.compile_workers``); {kernel or template name: error}.

    Errors are logged once; a timeout or a crashed compiler marks the kernel (or template step)
    broken so the runtime never waits on it: its reference runs, and with ``report`` (the
    graph's) the fallback is reported and the template's explain entry says why.
    """
    own = None
    if pool is None:
        pool = active_pool()
        if pool is None:
            from ..config import config

            pool = own = CompilePool(config.compile_workers, config.compile_timeout_s)
    work, served = _template_work(templates, pool.target)
    try:
        errors = precompile_kernels(kernels, pool, work)
    finally:
        if own is not None:
            own.close()
    for kernel in kernels:
        err = errors.get(kernel.name)
        if err is None:
            continue
        log.warning("first compile of %s failed in a worker: %s", kernel.name, err)
        if _fatal(err):
            kernel.broken = f"compile failed: {err}"
            if report is not None:
                report.add_fallback(f"kernel {kernel.name}", kernel.broken)
    for key in work:
        if key in errors:
            _template_failed(served[key], errors[key], report)
    return errors


def _fatal(err: str) -> bool:
    """A compile that timed out or killed its worker: the runtime must not try it again."""
    return "timeout" in err or "worker died" in err


def _template_failed(steps: Sequence[Any], err: str, report: Any) -> None:
    from ..report import mark_fell_back

    log.warning("first compile of template %s failed in a worker: %s", steps[0].node.op, err)
    if not _fatal(err):
        return  # a compile error: the runtime's first call raises it and falls back itself
    for step in steps:
        step.broken = f"compile failed: {err}"
        mark_fell_back(step.entry, step.broken)
        if report is not None:
            report.add_fallback(f"template {step.node.op}", step.broken)
