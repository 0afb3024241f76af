"""benchmarks/tuner_replay.py refuses non-GPU records and replays them when told to, labelled."""
from __future__ import annotations

import importlib.util
import json
import sys

from .conftest import REPO
from .tw_test_kernels import TinyMatmul, replay_table


def _bench():
    spec = importlib.util.spec_from_file_location("tuner_replay", REPO / "benchmarks" / "tuner_replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tuner_replay"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _record(tmp_path, source):
    k = TinyMatmul()
    configs = list(k.space.enumerate())
    from tilewright.schedule.space import config_hash
    rec = {"format": "tilewright-timings", "source": source,
           "device": {"name": "NVIDIA H100", "capability": "9.0", "triton_version": "3.6.0"},
           "kernels": [{"name": k.name, "problem": k.problem.to_dict(),
                        "space": {"kind": "matmul", "params": k.space.params, "version": "1",
                                  "default": k.space.default_config()},
                        "configs": {config_hash(c): c for c in configs},
                        "timings": replay_table(k.space, fail_every=11)}]}
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(rec))
    return path


def test_refuses_records_that_are_not_from_a_gpu(tmp_path, capsys):
    assert _bench().main(["replay", str(_record(tmp_path, "synthetic"))]) == 2
    assert "No real GPU records" in capsys.readouterr().out


def test_replays_synthetic_records_labelled(tmp_path, capsys):
    out_json = tmp_path / "out.json"
    rc = _bench().main(["replay", str(_record(tmp_path, "synthetic")), "--allow-synthetic",
                        "--seeds", "1", "--json-out", str(out_json)])
    text = capsys.readouterr().out
    assert rc == 0 and "SYNTHETIC" in text
    result = json.loads(out_json.read_text())["results"][0]
    assert result["strategies"]["triton.autotune"]["mean_trials"] == result["configs"]
    assert result["strategies"]["tilewright"]["mean_trials"] <= result["configs"]


def test_record_needs_a_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert _bench().main(["record", "autotune.tw_test_kernels:factory", "--out", str(tmp_path / "x")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().out
