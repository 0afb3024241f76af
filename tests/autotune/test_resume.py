"""`tilewright autotune` killed with SIGKILL and restarted loses no finished trial."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from .conftest import subprocess_env
from .tw_test_kernels import SlowVectorAdd
from tilewright.autotune.database import TuningDatabase
from tilewright.schedule.device import device_info
from tilewright.autotune.search import study_name


def _snapshot(url: str, name: str) -> dict[int, tuple]:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return {}
    return {t.number: (t.state, t.value, t.user_attrs.get("config_hash"), bool(t.user_attrs.get("measuring")))
            for t in study.get_trials(deepcopy=False)}


def test_sigkill_and_restart_resumes_without_losing_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuning.db'}"
    cmd = [sys.executable, "-m", "tilewright.cli", "autotune", "autotune.tw_test_kernels:slower_factory",
           "--trials", "8", "--storage", url, "--heartbeat", "1", "--seed", "0", "--no-progress",
           "--json"]
    kernel = SlowVectorAdd(n=500)
    name = study_name(kernel, device_info("cpu"))
    env = subprocess_env()
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # NOTE: no deadline: however slow the machine, wait for two finished trials and one in flight
    # (the first run cannot end before its 8 trials are done, so the loop always ends).
    snap: dict[int, tuple] = {}
    while first.poll() is None:
        snap = _snapshot(url, name)
        done = [n for n, s in snap.items() if s[0] == TrialState.COMPLETE]
        running = [n for n, s in snap.items() if s[0] == TrialState.RUNNING and s[3]]
        if len(done) >= 2 and running:
            break
        time.sleep(0.05)
    assert first.poll() is None, f"the first run ended (rc {first.returncode}) before it was killed"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = _snapshot(url, name)
    finished = {n: s for n, s in before.items() if s[0] in (TrialState.COMPLETE, TrialState.FAIL)}
    killed = [n for n, s in before.items() if s[0] == TrialState.RUNNING]
    assert len(finished) >= 2 and killed, before

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)  # hang guard
    assert second.returncode == 0, second.stderr[-3000:]

    study = optuna.load_study(study_name=name, storage=url)
    after = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number, (state, value, h, _) in finished.items():  # every finished trial kept as it was
        assert after[number].state == state and after[number].value == value
        assert after[number].user_attrs["config_hash"] == h
    for number in killed:  # the trial in flight was declared dead and run again
        assert after[number].state == TrialState.FAIL
        assert not after[number].user_attrs.get("measured")
        h = before[number][2]
        assert any(t.user_attrs.get("config_hash") == h and t.user_attrs.get("measured")
                   for t in after.values() if t.number > number)
    measured = [t for t in after.values() if t.user_attrs.get("measured")]
    assert len(measured) == 8
    assert len({t.user_attrs["config_hash"] for t in measured}) == 8
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    entry = TuningDatabase(url).lookup(kernel.problem, kernel.space, device_info("cpu"))
    assert entry is not None and entry.trials == 8
