"""The ``tilewright`` command line: help on every command, explain, demo, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tilewright.cli import COMMANDS, build_parser

FACTORY = '''
import torch

def make():
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.GELU(), torch.nn.LayerNorm(20)).eval()
    return model, (torch.randn(3, 12),)
'''


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TILEWRIGHT_INTERPRET="1", TRITON_INTERPRET="1")
    exe = Path(sys.executable).with_name("tilewright")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) >= {"demo", "explain"}
    for name in sub.choices:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out
    assert set(sub.choices) <= set(COMMANDS)


def test_explain_json(tmp_path: Path) -> None:
    (tmp_path / "factories.py").write_text(FACTORY)
    proc = _run("explain", "factories:make", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["coverage"] == 1.0
    kinds = {k["kind"] for k in data["kernels"]}
    assert "matmul" in kinds and "reduction" in kinds


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
