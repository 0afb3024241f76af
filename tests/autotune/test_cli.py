"""`tilewright autotune` and `tilewright tuning` end to end on CPU (interpreter timings)."""
from __future__ import annotations

import json

import pytest

from .tw_test_kernels import VectorAdd, replay_table
from tilewright.autotune.search import decode, encode
from tilewright.cli import main


@pytest.fixture(autouse=True)
def _isolated(cli_isolation):
    yield


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'tuning.db'}"


def test_autotune_json_and_plot(url, tmp_path, capsys):
    rc = main(["autotune", "autotune.tw_test_kernels:factory", "--trials", "4", "--storage", url,
               "--json", "--plot", str(tmp_path / "plots"), "--seed", "0"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"]
    assert out["device"]["name"] == "cpu-interpreter"
    assert "interpreter" in out["timing_label"]
    (k,) = out["kernels"]
    assert k["trials"] == 4 and k["config"] and k["default_time_s"] and k["time_s"]
    assert list((tmp_path / "plots").glob("*.png"))


def test_autotune_summary_table_and_tuning_commands(url, tmp_path, capsys):
    assert main(["autotune", "autotune.tw_test_kernels:factory", "--trials", "3", "--storage", url,
                 "--no-progress", "--sampler", "random"]) == 0
    out = capsys.readouterr().out
    assert "autotune summary" in out and "vector_add" in out and "interpreter" in out
    assert main(["tuning", "--storage", url, "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["kernel_name"] == "vector_add"
    key = rows[0]["problem_key"]
    assert main(["tuning", "show", key[:8], "--json", "--storage", url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["measurements"]) >= 3
    assert main(["tuning", "--storage", url, "show", "nosuchkey"]) == 1
    dump = tmp_path / "dump.json"
    assert main(["tuning", "export", "--storage", url, str(dump)]) == 0
    data = json.loads(dump.read_text())
    data["best_configs"].append({"problem_key": "x", "config_json": "{"})
    dump.write_text(json.dumps(data))
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["tuning", "import", str(dump), "--storage", other]) == 0
    assert "imported 1 entries, rejected 1" in capsys.readouterr().err
    assert main(["tuning", "--storage", other, "prune"]) == 2
    assert main(["tuning", "prune", "--all", "--storage", other]) == 0
    capsys.readouterr()
    assert main(["tuning", "list", "--storage", other, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


ACTIONS = {"list": [], "show": ["KEY"], "export": ["-"], "import": ["FILE"], "prune": ["--all"],
           "migrate": []}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_tuning_storage_before_or_after_the_action(action):
    from tilewright.cli import build_parser

    parser = build_parser()
    args = ACTIONS[action]
    assert parser.parse_args(["tuning", "--storage", "A", action, *args]).storage == "A"
    assert parser.parse_args(["tuning", action, *args, "--storage", "B"]).storage == "B"
    assert parser.parse_args(["tuning", action, "--storage", "C", *args]).storage == "C"
    assert parser.parse_args(["tuning", action, *args]).storage is None
    assert parser.parse_args(["tuning", action, *args]).action == action


def test_tuning_list_with_storage_after_the_action_reads_that_database(url, capsys):
    assert main(["autotune", "autotune.tw_test_kernels:factory", "--trials", "2", "--storage", url,
                 "--no-progress", "--no-costmodel"]) == 0
    capsys.readouterr()
    assert main(["tuning", "list", "--storage", url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["kernel_name"] == "vector_add" and row["timing_source"] == "interpreter"
    assert main(["tuning", "list", "--storage", url]) == 0
    table = capsys.readouterr().out
    assert "interpreter" in table and "source" in table


def test_autotune_replay_file(url, tmp_path, capsys):
    kernel = VectorAdd(n=2000)
    record = {"source": "synthetic (test)", "device": {"name": "NVIDIA H100", "capability": "9.0",
                                                      "triton_version": "3.6.0", "is_gpu": True},
              "kernels": [{"name": kernel.name, "timings": replay_table(kernel.space)}]}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    assert main(["autotune", "autotune.tw_test_kernels:factory", "--trials", "20", "--storage", url,
                 "--replay", str(path), "--json", "--no-costmodel"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kernels"][0]["config"] == {"BLOCK_SIZE": 512, "num_warps": 4}
    assert "replayed" in out["timing_label"]


def test_autotune_bad_target_is_an_error(url, capsys):
    assert main(["autotune", "no_such_module:factory", "--storage", url]) == 2
    assert main(["autotune", "nocolon", "--storage", url]) == 2


def test_autotune_fails_when_nothing_runs(url, tmp_path, capsys):
    record = {"source": "synthetic", "kernels": [{"name": "vector_add", "timings": {}}]}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    rc = main(["autotune", "autotune.tw_test_kernels:factory", "--trials", "3", "--storage", url,
               "--replay", str(path), "--json", "--no-costmodel"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and not out["ok"] and out["kernels"][0]["failed"] == 3


def test_encode_decode_round_trip():
    space = VectorAdd().space
    for config in space.enumerate():
        assert decode(space, encode(space, config)) == config


def test_model_factory_through_the_frontend(url, capsys):
    from tilewright.frontend import api

    if not hasattr(api, "tunable_kernels"):
        pytest.skip("tilewright.frontend.api.tunable_kernels not available yet")
    from .tw_test_kernels import model_factory

    kernels = api.tunable_kernels(*model_factory())
    if not kernels:
        pytest.skip("the frontend produced no tunable kernels for a Linear layer")
    empty = [k.name for k in kernels if k.space.size() == 0]
    if empty:
        pytest.skip(f"frontend kernels with no feasible config (frontend/codegen bug): {empty}")
    rc = main(["autotune", "autotune.tw_test_kernels:model_factory", "--trials", "2", "--storage", url,
               "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    assert json.loads(captured.out)["ok"]


def test_workers_rebuild_unpicklable_kernels_from_the_factory(url, caplog):
    import optuna

    from .tw_test_kernels import unpicklable_factory

    rc = main(["autotune", "autotune.tw_test_kernels:unpicklable_factory", "--trials", "6",
               "--storage", url, "--workers", "2", "--json", "--seed", "0"])
    assert rc == 0
    assert "exited with" not in caplog.text and "using threads" not in caplog.text
    from tilewright.schedule.device import device_info
    from tilewright.autotune.search import study_name

    (kernel,) = unpicklable_factory()
    study = optuna.load_study(study_name=study_name(kernel, device_info("cpu")), storage=url)
    measured = [t for t in study.trials if t.user_attrs.get("measured")]
    assert 6 <= len(measured) <= 7
    assert len({t.user_attrs["config_hash"] for t in measured}) == len(measured)


def test_unreachable_storage_is_an_error(tmp_path, capsys):
    bad = "postgresql+psycopg2://nobody:x@127.0.0.1:1/none"
    assert main(["autotune", "autotune.tw_test_kernels:factory", "--trials", "2", "--storage", bad,
                 "--json"]) == 2
    assert "tuning database" in capsys.readouterr().err
