"""Honest results: strict mode, coverage from what ran, and every fallback reported.

Tests marked ``fallback`` run with strict mode off (see tests/conftest.py) and assert that the
fallback happened, was reported and left the results correct.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tilewright.runtime import graph as runtime
from tilewright.errors import StrictModeError
from tilewright.report import collect

from .helpers import assert_close, compile_and_run

REPO = Path(__file__).resolve().parents[2]


class Mixed(torch.nn.Module):
    """Embedding, 1-D convolution, layer norm, linears and causal attention: every kernel kind."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(11, 16)
        self.conv = torch.nn.Conv1d(16, 16, 3, padding=1)
        self.norm = torch.nn.LayerNorm(16)
        self.qkv = torch.nn.Linear(16, 48)
        self.proj = torch.nn.Linear(16, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        h = self.emb(ids)
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2).relu()
        h = self.norm(h)
        q, k, v = self.qkv(h).view(b, t, 3, 2, 8).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(a.transpose(1, 2).reshape(b, t, 16))


def _train_step(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    out = model(ids)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def _fail_every_triton_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Triton kernel launch (generated or hand-written) raises."""
    from triton.runtime.interpreter import InterpretedFunction

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected launch failure")

    monkeypatch.setattr(InterpretedFunction, "run", broken)


def test_every_kernel_failing_raises_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_every_triton_launch(monkeypatch)
    torch.manual_seed(0)
    model = Mixed()
    with pytest.raises(StrictModeError, match="injected launch failure"):
        torch.compile(model, backend="tilewright")(torch.randint(0, 11, (2, 7)))


@pytest.mark.fallback
def test_every_kernel_failing_runs_correctly_with_zero_coverage(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = Mixed()
    ids = torch.randint(0, 11, (2, 7))
    want_out, want_grads = _train_step(model, ids)
    _fail_every_triton_launch(monkeypatch)
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report:
        got_out, got_grads = _train_step(compiled, ids)
        got_out2, _ = _train_step(compiled, ids)  # second call: references straight away
    assert_close(got_out, want_out, rtol=1e-4, atol=1e-5)
    assert_close(got_out2, want_out, rtol=1e-4, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert report.coverage == 0.0, str(report)
    assert report.attention_fused == 0, "the attention block ran its reference"
    kinds = {k["kind"] for k in report.kernels}
    assert {"pointwise", "reduction", "matmul", "template"} <= kinds, kinds
    assert report.kernels and all(k["status"] == "fell back" for k in report.kernels), report.kernels
    reported = {f["op"] for f in report.fallbacks}
    for k in report.kernels:
        assert f"kernel {k['name']}" in reported or f"template {k['name']}" in reported, (k["name"], reported)
    assert any(k["name"].startswith("tilewright.flash_attention_backward") for k in report.kernels)
    assert any(k["name"].startswith("aten.convolution_backward") for k in report.kernels)
    text = str(report)
    assert "fell back" in text and "coverage 0.0%" in text


def test_healthy_run_counts_every_kernel_as_ran() -> None:
    torch.manual_seed(0)
    model = Mixed()
    ids = torch.randint(0, 11, (2, 7))
    want_out, want_grads = _train_step(model, ids)
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report:
        got_out, got_grads = _train_step(compiled, ids)
    assert_close(got_out, want_out, rtol=1e-4, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, rtol=1e-4, atol=1e-4)
    assert all(k["status"] == "ran" for k in report.kernels), report.kernels
    assert report.coverage == 1.0, str(report)
    assert report.attention_fused == 1
    assert report.to_dict()["kernel_status"]["ran"] == len(report.kernels)


def _fail_attention_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    from tilewright.targets.triton.attention import launch as attention

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected attention failure")

    monkeypatch.setattr(attention, "flash_attention_forward", broken)


@pytest.mark.fallback
def test_attention_kernel_failure_falls_back_to_its_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_attention_forward(monkeypatch)
    q, k, v = (torch.randn(1, 2, 13, 16) for _ in range(3))
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True) * 2  # noqa: E731
    out, report = compile_and_run(fn, q, k, v)
    assert_close(out, fn(q, k, v), rtol=1e-4, atol=1e-5)
    assert report.attention_fused == 0
    template = [k for k in report.kernels if k["kind"] == "template"]
    assert template and template[0]["status"] == "fell back" and "injected" in template[0]["fallback"]
    assert any(f["op"].startswith("template tilewright.flash_attention") for f in report.fallbacks)
    assert report.coverage < 1.0


def test_attention_kernel_failure_raises_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_attention_forward(monkeypatch)
    q = torch.randn(1, 2, 13, 16)
    with pytest.raises(StrictModeError, match="flash_attention.*injected attention failure"):
        compile_and_run(lambda q: F.scaled_dot_product_attention(q, q, q), q)


def _fail_cumsum_extern(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extern call of aten.cumsum raises inside the compiled graph (eager still works)."""
    original = runtime.CompiledGraph._run_extern

    def failing(self: Any, node: Any, env: Any) -> Any:
        if "cumsum" in node.op:
            raise RuntimeError("injected extern failure")
        return original(self, node, env)

    monkeypatch.setattr(runtime.CompiledGraph, "_run_extern", failing)


@pytest.mark.fallback
def test_failing_extern_step_runs_the_graph_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_cumsum_extern(monkeypatch)
    fn = lambda x: torch.cumsum(x.exp(), -1).sigmoid()  # noqa: E731
    x = torch.randn(3, 10)
    compiled = torch.compile(fn, backend="tilewright")
    with collect() as report:
        assert_close(compiled(x), fn(x))
        assert_close(compiled(x), fn(x))
    assert report.graphs[0].mode == "eager (run failed)"
    assert report.coverage == 0.0
    assert any(f["op"].startswith("graph ") and "injected extern failure" in f["reason"] for f in report.fallbacks)


def test_failing_extern_step_raises_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_cumsum_extern(monkeypatch)
    with pytest.raises(StrictModeError, match="injected extern failure"):
        compile_and_run(lambda x: torch.cumsum(x.exp(), -1), torch.randn(3, 10))


def test_the_programs_own_errors_propagate_unchanged() -> None:
    """A singular matrix is the program's error, not a fallback: eager's exception, strict or not."""
    fn = lambda x: torch.linalg.inv(x.sigmoid() - 0.5).relu()  # noqa: E731
    x = torch.zeros(3, 3)
    with pytest.raises(torch.linalg.LinAlgError):
        fn(x)
    with pytest.raises(torch.linalg.LinAlgError):
        torch.compile(fn, backend="tilewright")(x)


def test_an_op_the_importer_cannot_type_is_an_extern_step_of_its_own() -> None:
    """torch.linalg.inv lowers to a with_effects call; the rest of the graph still compiles."""
    fn = lambda x: torch.linalg.inv(torch.sigmoid(x) * 2).relu() + 1  # noqa: E731
    x = torch.randn(4, 4) + 3 * torch.eye(4)
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x), rtol=1e-4, atol=1e-5)
    assert report.graphs[0].mode == "interpreter", report.graphs[0].mode
    assert any("linalg_inv" in f["op"] for f in report.fallbacks), report.fallbacks
    assert 0.5 < report.coverage < 1.0, str(report)


@pytest.mark.fallback
def test_a_graph_that_fails_to_compile_counts_its_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    from tilewright import compiler as compile_mod

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected import failure")

    monkeypatch.setattr(compile_mod, "import_fx", broken)
    fn = lambda x: (x.exp() + 1).sum(-1)  # noqa: E731
    x = torch.randn(3, 5)
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x))
    assert report.graphs[0].mode == "eager (compile failed)"
    assert report.graphs[0].compute_ops == 3 and report.coverage == 0.0


def test_a_graph_that_fails_to_compile_raises_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from tilewright import compiler as compile_mod

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected import failure")

    monkeypatch.setattr(compile_mod, "import_fx", broken)
    with pytest.raises(StrictModeError, match="injected import failure"):
        compile_and_run(lambda x: x.exp() + 1, torch.randn(3, 5))


def test_unsupported_convolution_backward_is_an_extern_call_not_a_kernel() -> None:
    conv = torch.nn.Conv1d(3, 4, 3).double()
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(conv, backend="tilewright")
    with collect() as report:
        compiled(x).sum().backward()
    names = [k["name"] for k in report.kernels]
    assert not any("convolution_backward" in n for n in names), names
    reasons = [f["reason"] for f in report.fallbacks if "convolution_backward" in f["op"]]
    assert reasons and "float64" in reasons[0], report.fallbacks


@pytest.mark.parametrize("kind,flag", [("matmul", "matmul"), ("conv", "cudnn")])
def test_verify_tolerance_follows_tf32(monkeypatch: pytest.MonkeyPatch, kind: str, flag: str) -> None:
    kernel = SimpleNamespace(kind=kind)
    on_gpu = SimpleNamespace(dtype=torch.float32, device=SimpleNamespace(type="cuda"))
    on_cpu = SimpleNamespace(dtype=torch.float32, device=SimpleNamespace(type="cpu"))
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    target = torch.backends.cuda.matmul if flag == "matmul" else torch.backends.cudnn
    saved = target.allow_tf32
    try:
        target.allow_tf32 = False
        exact = runtime.verify_tolerance(kernel, on_gpu)
        target.allow_tf32 = True
        loose = runtime.verify_tolerance(kernel, on_gpu)
    finally:
        target.allow_tf32 = saved
    assert loose[0] > 10 * exact[0] and loose[1] > 10 * exact[1]
    assert runtime.verify_tolerance(kernel, on_cpu) == exact, "CPU references never use TF32"
    pointwise = SimpleNamespace(kind="pointwise")
    assert runtime.verify_tolerance(pointwise, on_gpu) == exact


_AFTER_TRITON = textwrap.dedent("""
    import torch, torch._dynamo, triton   # Triton first, as torch.compile's own imports do
    import torch.nn.functional as F

    def f(x, q):
        return torch.sigmoid(x).sum(-1) + torch.softmax(x, -1).amax(-1), \\
            F.scaled_dot_product_attention(q, q, q, is_causal=True)

    x, q = torch.randn(5, 37), torch.randn(1, 2, 19, 16)
    got, want = torch.compile(f, backend="tilewright")(x, q), f(x, q)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want)), "wrong results"
    import tilewright.report as r
    status = [k["status"] for g in r.history for k in g.kernels]
    assert status and set(status) == {"ran"}, status
    assert [g.mode for g in r.history] == ["interpreter"]
    print("OK", len(status))
""")


def test_interpreter_switch_works_when_triton_was_imported_first(tmp_path: Path) -> None:
    """TILEWRIGHT_INTERPRET=1 alone, the backend found through its entry point, Triton imported first."""
    script = tmp_path / "user_script.py"
    script.write_text(_AFTER_TRITON)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(TILEWRIGHT_INTERPRET="1", TILEWRIGHT_STRICT="1", TILEWRIGHT_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK"), proc.stdout
