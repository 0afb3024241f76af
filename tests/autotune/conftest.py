"""Fixtures for the autotuner tests: test kernels, replay tables, database URLs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
for _p in (str(REPO), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from .tw_test_kernels import TinyMatmul, VectorAdd, replay_table  # noqa: E402
from tilewright.autotune.measure import ReplayMeasurer  # noqa: E402


def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes that import tilewright and the test kernels.

    NOTE: Triton's own builtins (tl.zeros, ...) only run in the interpreter when TRITON_INTERPRET
    is set; TILEWRIGHT_INTERPRET alone is not enough for them. In-process tests only run
    kernels that need neither (and never set them globally: other packages' tests check the
    eager fallback).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env["TILEWRIGHT_INTERPRET"] = "1"
    env["TRITON_INTERPRET"] = "1"
    return env


@pytest.fixture
def cli_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo what `tilewright autotune` changes in-process (interpreter switch, environment)."""
    from tilewright.config import config

    monkeypatch.setattr(config, "interpret", config.interpret)
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", ""))


@pytest.fixture
def mm_kernel() -> TinyMatmul:
    return TinyMatmul()


@pytest.fixture
def add_kernel() -> VectorAdd:
    return VectorAdd(n=1000)


@pytest.fixture
def mm_replay(mm_kernel: TinyMatmul) -> ReplayMeasurer:
    return ReplayMeasurer(replay_table(mm_kernel.space, fail_every=7))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuning.db'}"


@pytest.fixture
def pg_url() -> str:
    """URL of the PostgreSQL test server (``.ci/postgres.sh``); fails under CI when unset."""
    url = os.environ.get("TILEWRIGHT_TEST_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("TILEWRIGHT_TEST_PG_URL is not set under CI: .ci/run must start PostgreSQL "
                        "with .ci/postgres.sh")
        pytest.skip("TILEWRIGHT_TEST_PG_URL not set; run `eval \"$(bash .ci/postgres.sh)\"` to test "
                    "against a real PostgreSQL server")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path):
    """One shared database test suite, run on every kind: a SQLite file, and a fresh database
    on the PostgreSQL test server (skipped without one, failed under CI)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tuning.db'}"
        return
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    base = request.getfixturevalue("pg_url")
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"tw_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
