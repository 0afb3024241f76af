"""Schedule spaces: stable hashes, constraints checked before compiling, plain-dict configs."""
from __future__ import annotations

import subprocess
import sys

from .conftest import subprocess_env
from .tw_test_kernels import SMEM_LIMIT, make_add_space, make_mm_space
from tilewright.autotune.database import space_version
from tilewright.autotune.search import encode
from tilewright.schedule.space import config_hash


def test_config_hash_is_order_independent_and_stable_across_processes():
    a = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4}
    b = {"num_warps": 4, "BLOCK_N": 32, "BLOCK_M": 64}
    assert config_hash(a) == config_hash(b)
    code = "from tilewright.schedule.space import config_hash; print(config_hash({'num_warps': 4, 'BLOCK_M': 64, 'BLOCK_N': 32}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(subprocess_env(), PYTHONHASHSEED="123"), check=True)
    assert out.stdout.strip() == config_hash(a)


def test_constraints_reject_before_compiling():
    space = make_mm_space(k=64)
    ok = space.default_config()
    assert space.check(ok) is None
    smem = dict(ok, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_stages=4)
    assert "shared memory" in space.check(smem)
    div = dict(ok, BLOCK_K=128)
    assert "divisible" in make_mm_space(k=96).check(dict(ok, BLOCK_K=64))
    assert space.check(div) is not None  # 128 > K: smem/divisibility
    assert "tile too small" in space.check(dict(ok, BLOCK_M=16, BLOCK_N=16, num_warps=2))
    assert "unknown parameters" in space.check(dict(ok, GROUP_M=8))
    assert "missing" in space.check({"BLOCK_M": 32})
    assert "not one of" in space.check(dict(ok, BLOCK_M=48))


def test_enumerate_yields_only_feasible_configs():
    space = make_mm_space()
    configs = list(space.enumerate())
    assert configs and all(space.check(c) is None for c in configs)
    for c in configs:
        smem = (c["BLOCK_M"] * c["BLOCK_K"] + c["BLOCK_K"] * c["BLOCK_N"]) * 4 * c["num_stages"]
        assert smem <= SMEM_LIMIT
    assert len({config_hash(c) for c in configs}) == len(configs)
    add = make_add_space()
    assert all(c["BLOCK_SIZE"] >= 32 * c["num_warps"] for c in add.enumerate())


def test_space_version_changes_with_params_and_version():
    a, b = make_mm_space(), make_mm_space()
    assert space_version(a) == space_version(b)
    b.version = "2"
    assert space_version(a) != space_version(b)
    c = make_mm_space()
    c.params["BLOCK_M"] = [16, 32]
    assert space_version(a) != space_version(c)


def test_numeric_params_encode_as_ordinal_indices():
    space = make_mm_space()
    params = encode(space, space.default_config())
    assert params["BLOCK_M"] == space.params["BLOCK_M"].index(32)
