"""The ``tilewright`` command line: help on every command, explain, demo, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tilewright.cli import COMMANDS, build_parser, main

FACTORY = '''
import torch

def make():
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.GELU(), torch.nn.LayerNorm(20)).eval()
    return model, (torch.randn(3, 12),)
'''


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TILEWRIGHT_INTERPRET="1", TRITON_INTERPRET="1")
    exe = Path(sys.executable).with_name("tilewright")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=3600)  # a hang guard, not a speed test


def _commands(parser) -> list[list[str]]:
    """Every command line prefix: each sub-command, and each action of those that have them."""
    found = []
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, child in action.choices.items():
                found.append([name])
                found.extend([name, *rest] for rest in _commands(child))
    return found


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) >= {"demo", "explain", "tuning", "autotune"}
    assert set(sub.choices) <= set(COMMANDS)
    commands = _commands(parser)
    assert ["tuning", "list"] in commands and ["tuning", "migrate"] in commands
    for words in commands:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*words, "--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_verbose_may_follow_any_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["explain", "m:f", "-v"]).verbose == 1
    assert parser.parse_args(["-v", "explain", "m:f"]).verbose == 1
    assert parser.parse_args(["explain", "m:f"]).verbose == 0
    assert parser.parse_args(["tuning", "list", "-vv"]).verbose == 2
    assert parser.parse_args(["autotune", "m:f", "--trials", "2", "-v"]).verbose == 1


# -- bad inputs: one line on stderr, a non-zero exit code, no traceback -------------------------

BAD_MODULE = "raise RuntimeError('broken at import')\n"
FACTORIES = '''
def raises():
    raise RuntimeError("no weights here")

def wrong():
    return 42

not_callable = 3
'''


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Run ``main`` in-process from an empty folder, restoring what it changes (env, cwd, path)."""
    monkeypatch.setenv("TILEWRIGHT_INTERPRET", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "badmod.py").write_text(BAD_MODULE)
    (tmp_path / "cli_factories.py").write_text(FACTORIES)
    (tmp_path / "bad.mlir").write_text("this is not MLIR\n")
    (tmp_path / "corrupt.db").write_text("not a database\n")
    (tmp_path / "bad.json").write_text("{not json")
    yield tmp_path
    for name in ("badmod", "cli_factories", "good"):  # imported from tmp_path by the commands
        sys.modules.pop(name, None)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, code, says", [
    (["explain", "bad.mlir"], 2, "bad.mlir is not valid torch-dialect MLIR"),
    (["explain", "missing.mlir"], 2, "no such MLIR file: missing.mlir"),
    (["explain", "missing.py:make"], 2, "no such file missing.py"),
    (["explain", "no_such_module:make"], 2, "cannot import 'no_such_module'"),
    (["explain", "badmod:make"], 2, "cannot import 'badmod': RuntimeError: broken at import"),
    (["explain", "cli_factories:nothing"], 2, "has no callable 'nothing'"),
    (["explain", "cli_factories:not_callable"], 2, "has no callable 'not_callable'"),
    (["explain", "cli_factories:raises"], 2, "cli_factories:raises raised RuntimeError: no weights here"),
    (["explain", "cli_factories:wrong"], 2, "must return (model, example_inputs), got int"),
    (["explain", "nocolon"], 2, "expected MODULE:FACTORY"),
    (["tuning", "list", "--storage", "not-a-url"], 2, "cannot open the tuning database"),
    (["tuning", "list", "--storage", "sqlite:///corrupt.db"], 2, "file is not a database"),
    (["tuning", "import", "missing.json", "--storage", "sqlite:///t.db"], 2, "No such file"),
    (["tuning", "import", "bad.json", "--storage", "sqlite:///t.db"], 2, "not JSON"),
    (["tuning", "export", "no/such/dir/x.json", "--storage", "sqlite:///t.db"], 2, "cannot write"),
    (["tuning", "show", "nokey", "--storage", "sqlite:///t.db"], 1, "no entry for key"),
    (["tuning", "prune", "--storage", "sqlite:///t.db"], 2, "say what to prune"),
    (["autotune", "x:y", "--replay", "missing.json"], 2, "cannot replay missing.json"),
    (["autotune", "x:y", "--replay", "bad.json"], 2, "cannot replay bad.json"),
    (["autotune", "no_such_module:make", "--storage", "sqlite:///t.db"], 2, "cannot get kernels"),
    (["train-costmodel", "missing.jsonl", "--out", "m.json"], 1, "no such file"),
    (["train-costmodel", "bad.json", "--out", "m.json"], 1, "bad.json"),
])
def test_bad_inputs_give_one_line(in_process: Path, capsys: pytest.CaptureFixture[str],
                                  argv: list[str], code: int, says: str) -> None:
    assert main(argv) == code
    assert says in _one_line_error(capsys)


def test_unexpected_failure_is_one_line_and_v_shows_the_traceback(
        in_process: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import tilewright

    (in_process / "good.py").write_text(FACTORY)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("compiler bug\nsecond line")

    monkeypatch.setattr(tilewright, "explain", broken)
    assert main(["explain", "good:make"]) == 1
    line = _one_line_error(capsys)
    assert "compiling good:make failed: RuntimeError: compiler bug second line" in line
    assert "-v" in line
    assert main(["explain", "good:make", "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: explain: RuntimeError")


def test_explain_json(tmp_path: Path) -> None:
    (tmp_path / "factories.py").write_text(FACTORY)
    proc = _run("explain", "factories:make", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["coverage"] == 1.0
    kinds = {k["kind"] for k in data["kernels"]}
    assert "matmul" in kinds and "reduction" in kinds


KWARGS_FACTORY = '''
import torch


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(12, 20)

    def forward(self, pixel_values, scale=None):
        return torch.nn.functional.gelu(self.proj(pixel_values)) * scale


def make():
    return TwoInputs().eval(), {"pixel_values": torch.randn(3, 12), "scale": torch.randn(20)}
'''


def test_explain_and_tunable_kernels_take_keyword_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A factory returning a dict (Hugging Face style inputs) is called as ``model(**inputs)``."""
    (tmp_path / "kwfactories.py").write_text(KWARGS_FACTORY)
    proc = _run("explain", "kwfactories:make", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    kinds = {k["kind"] for k in json.loads(proc.stdout)["kernels"]}
    assert "matmul" in kinds

    from tilewright.autotune.model_kernels import kernels_of, load_target

    monkeypatch.setenv("TILEWRIGHT_INTERPRET", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    kernels = kernels_of(load_target("kwfactories:make"))
    assert kernels and all(k.problem.key() for k in kernels)


@pytest.mark.native_cpu
def test_explain_on_cpu_reports_the_native_target_as_torch_compile_runs_it(tmp_path: Path) -> None:
    """Without a GPU the command switches Triton's interpreter on at start-up; explain must still
    compile with the native C++ target (what ``torch.compile`` uses), unless Triton is asked for."""
    (tmp_path / "factories.py").write_text(FACTORY)
    exe = Path(sys.executable).with_name("tilewright")
    env = {k: v for k, v in os.environ.items() if k not in ("TILEWRIGHT_INTERPRET", "TRITON_INTERPRET",
                                                            "TILEWRIGHT_TARGET")}
    native = subprocess.run([str(exe), "explain", "factories:make", "--json"], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=3600)
    assert native.returncode == 0, native.stderr
    assert json.loads(native.stdout)["graphs"][0]["target"].startswith("C++")
    asked = subprocess.run([str(exe), "explain", "factories:make", "--json"], capture_output=True, text=True,
                           cwd=tmp_path, env=dict(env, TILEWRIGHT_TARGET="triton"), timeout=3600)
    assert asked.returncode == 0, asked.stderr
    assert "C++" not in json.loads(asked.stdout)["graphs"][0]["target"]


def test_explain_bad_spec_fails_with_a_clear_message(tmp_path: Path) -> None:
    proc = _run("explain", "no_such_module:make", cwd=tmp_path)
    assert proc.returncode == 2
    assert "cannot import" in proc.stderr


@pytest.mark.slow
def test_demo_matches_eager() -> None:
    proc = _run("demo", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert {r["model"] for r in data["results"]} == {"gpt2", "resnet"}
    assert all(r["matches_eager"] for r in data["results"])
