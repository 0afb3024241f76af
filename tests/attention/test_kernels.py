"""Flash-attention kernels (Triton interpreter) against a float64 torch reference.

Sizes are deliberately not multiples of any block size. Gradients are checked for q, k, v and
the additive bias; grouped-query attention, broadcast masks/biases (stride 0), causal alignment
offsets, head dims 16-256, float16/bfloat16, dropout and the split-K decode path are covered.
"""
from __future__ import annotations

import pytest
import torch

from tilewright.targets.triton.attention import launch as A
from tilewright.ops.attention import attention_reference


def reference(q, k, v, bias=None, mask=None, scale=None, causal=False, offset=0, keep=None, p=0.0):
    """float64 math attention (GQA by repeat, excluded rows give 0)."""
    q, k, v = q.double(), k.double(), v.double()
    Bq, H, M, D = q.shape
    N = k.shape[2]
    g = H // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * (D ** -0.5 if scale is None else scale)
    if bias is not None:
        s = s + bias.double()
    valid = torch.ones(M, N, dtype=torch.bool)
    if causal:
        valid = torch.arange(N)[None, :] <= torch.arange(M)[:, None] + offset
    if mask is not None:
        valid = valid & mask
    s = s.masked_fill(~valid, float("-inf"))
    prob = torch.softmax(s, -1).nan_to_num(0.0)
    if keep is not None:
        prob = prob * keep / (1 - p)
    return prob @ v


def rand(*shape, dtype=torch.float32, grad=True):
    t = torch.randn(*shape, dtype=dtype)
    return t.requires_grad_(grad)


#: Small blocks so odd sizes span several (and partial) blocks in both directions.
SMALL = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 2, "num_stages": 1}


def check(q, k, v, *, bias=None, mask=None, scale=None, causal=False, offset=0, tol=2e-5, grads=True,
          config=None):
    config = config or SMALL
    out, lse = A.flash_attention_forward(q.detach(), k.detach(), v.detach(), bias=None if bias is None else bias.detach(),
                                         mask=mask, scale=scale, causal=causal, causal_offset=offset,
                                         config=config, decode=False)
    want = reference(q, k, v, bias, mask, scale, causal, offset)
    torch.testing.assert_close(out.double(), want.detach(), rtol=tol, atol=tol)
    if not grads:
        return
    dout = torch.randn_like(out)
    leaves = [q, k, v] + ([bias] if bias is not None and bias.requires_grad else [])
    want_g = torch.autograd.grad(want, leaves, dout.double())
    dq, dk, dv, db = A.flash_attention_backward(
        dout, q.detach(), k.detach(), v.detach(), out, lse, bias=None if bias is None else bias.detach(),
        mask=mask, scale=scale, causal=causal, causal_offset=offset, bias_grad=len(leaves) == 4, config=config)
    got_g = [dq, dk, dv] + ([db] if len(leaves) == 4 else [])
    for name, g, w in zip("q k v bias".split(), got_g, want_g):
        err = (g.double() - w).abs().max().item()
        assert err <= tol * 5 * (1 + w.abs().max().item()), f"d{name}: max error {err:.3e}"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_plain_odd_sizes() -> None:
    check(rand(2, 3, 37, 40), rand(2, 3, 45, 40), rand(2, 3, 45, 40))


@pytest.mark.parametrize("m,n,offset", [(29, 29, 0), (19, 43, 0), (19, 43, 24), (43, 19, -24), (33, 17, 0)])
def test_causal_alignments(m: int, n: int, offset: int) -> None:
    # offset 0: SDPA is_causal (top-left); n - m: bottom-right; rows with no key give 0.
    check(rand(1, 2, m, 16), rand(1, 2, n, 16), rand(1, 2, n, 16), causal=True, offset=offset)


def test_gqa_without_copy() -> None:
    check(rand(2, 6, 21, 16), rand(2, 2, 35, 16), rand(2, 2, 35, 16), causal=True)


def test_broadcast_mask_and_bias_with_grad() -> None:
    mask = torch.rand(2, 1, 1, 39) > 0.3  # padding mask, stride 0 on heads and queries
    mask[..., 0] = True
    bias = rand(1, 4, 23, 39)            # position bias shared over the batch
    check(rand(2, 4, 23, 32), rand(2, 4, 39, 32), rand(2, 4, 39, 32), bias=bias, mask=mask, scale=0.2)


def test_bias_vector_broadcast_and_full_mask() -> None:
    bias = rand(39)                     # broadcast over everything but keys
    mask = torch.rand(2, 4, 23, 39) > 0.5
    check(rand(2, 4, 23, 16), rand(2, 4, 39, 16), rand(2, 4, 39, 16), bias=bias, mask=mask)


def test_fully_masked_rows_and_blocks_give_zero() -> None:
    mask = torch.zeros(1, 1, 40, 50, dtype=torch.bool)
    mask[:, :, :20, :10] = True  # rows 20.. have no key; key blocks past 16 are all false
    check(rand(1, 2, 40, 16), rand(1, 2, 50, 16), rand(1, 2, 50, 16), mask=mask)


@pytest.mark.parametrize("d", [16, 40, 64, 80, 128, 256])
def test_head_dims(d: int) -> None:
    check(rand(1, 2, 18, d), rand(1, 2, 21, d), rand(1, 2, 21, d), causal=True, grads=d <= 64, tol=5e-5)


def test_block_configs_from_space() -> None:
    space = A.forward_space(40, "float32")
    for cfg in ({"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 1},
                {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 2}):
        assert space.is_feasible(cfg)
        check(rand(1, 2, 37, 40), rand(1, 2, 41, 40), rand(1, 2, 41, 40), causal=True, config=cfg, grads=False)


def test_float16_and_bfloat16() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v = (torch.randn(1, 2, 19, 32, dtype=dtype) for _ in range(3))
        out, _ = A.flash_attention_forward(q, k, v, causal=True, decode=False)
        assert out.dtype == dtype
        want = reference(q, k, v, causal=True)
        torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=2e-2)


def test_dropout_is_seeded_and_backward_consistent() -> None:
    # V = identity reveals the dropped probabilities: out = p * keep / (1 - p_drop).
    p = 0.3
    n = 32
    q = rand(1, 2, 20, n)
    k = rand(1, 2, n, n)
    eye = torch.eye(n).expand(1, 2, n, n).contiguous()
    seed = torch.tensor([1234])
    probs, _ = A.flash_attention_forward(q.detach(), k.detach(), eye, dropout_p=p, seed=seed, decode=False)
    again, _ = A.flash_attention_forward(q.detach(), k.detach(), eye, dropout_p=p, seed=seed, decode=False)
    torch.testing.assert_close(probs, again)  # same seed, same mask
    keep = (probs != 0).double()
    assert 0.55 < keep.mean().item() < 0.85  # ~ 1 - p kept
    # Gradients with a real V must equal the reference using the same keep-mask.
    v = rand(1, 2, n, n)
    out, lse = A.flash_attention_forward(q.detach(), k.detach(), v.detach(), dropout_p=p, seed=seed, decode=False)
    want = reference(q, k, v, keep=keep, p=p)
    torch.testing.assert_close(out.double(), want.detach(), rtol=1e-4, atol=1e-4)
    dout = torch.randn_like(out)
    dq, dk, dv, _ = A.flash_attention_backward(dout, q.detach(), k.detach(), v.detach(), out, lse,
                                               dropout_p=p, seed=seed)
    wq, wk, wv = torch.autograd.grad(want, [q, k, v], dout.double())
    for g, w in zip((dq, dk, dv), (wq, wk, wv)):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hq,hkv,m,causal", [(4, 2, 1, False), (8, 2, 3, True), (2, 2, 1, True)])
def test_decode_split_k(hq: int, hkv: int, m: int, causal: bool) -> None:
    n = 301
    q, k, v = rand(2, hq, m, 32, grad=False), rand(2, hkv, n, 32, grad=False), rand(2, hkv, n, 32, grad=False)
    mask = torch.rand(2, 1, 1, n) > 0.2
    bias = torch.randn(1, hq, 1, n)
    cfg = {"NUM_SPLITS": 4, "BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    assert A.use_decode_path(m, n, 0.0)
    out, lse = A.flash_attention_forward(q, k, v, bias=bias, mask=mask, causal=causal, causal_offset=n - m,
                                         config=cfg, decode=True)
    want = reference(q, k, v, bias, mask, None, causal, n - m)
    torch.testing.assert_close(out.double(), want, rtol=2e-5, atol=2e-5)
    # lse equals the non-split kernel's
    _, lse_full = A.flash_attention_forward(q, k, v, bias=bias, mask=mask, causal=causal, causal_offset=n - m,
                                            decode=False)
    torch.testing.assert_close(lse, lse_full, rtol=1e-5, atol=1e-5)


def test_schedule_spaces_respect_shared_memory() -> None:
    for builder in (A.forward_space, A.backward_space, A.decode_space):
        small = builder(256, "float16", smem_bytes=48 * 1024)
        big = builder(64, "float16", smem_bytes=227 * 1024)
        assert small.is_feasible(small.default_config()) and big.is_feasible(big.default_config())
        assert 0 < small.size() < big.size()
    space = A.forward_space(128, "float16", smem_bytes=48 * 1024)
    reason = space.check({"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 4})
    assert reason and "shared memory" in reason
    assert "NUM_SPLITS" in A.decode_space(64).params


@pytest.mark.parametrize("which", ["fwd", "bwd", "decode"])
def test_tunable_kernel_runs(which: str) -> None:
    kern = A.AttentionKernel(which, batch=1, heads=2, kv_heads=1, m=1 if which == "decode" else 20,
                             n=260 if which == "decode" else 24, head_dim=16, dtype="float32", causal=False)
    assert kern.problem.kind == "attention" and kern.problem.flops > 0
    inputs = kern.make_inputs("cpu")
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 2, "num_stages": 1}
    if which == "decode":
        cfg.update(NUM_SPLITS=4)
    kern.runner(cfg)(inputs)


def test_custom_op_kernel_path_matches_reference_path() -> None:
    q, k, v = rand(1, 4, 13, 16), rand(1, 2, 17, 16), rand(1, 2, 17, 16)
    bias = rand(1, 1, 13, 17)
    out, lse = torch.ops.tilewright.flash_attention(q, k, v, bias, None, None, 0.3, True, 4, 0.0)
    ref_out, ref_lse = attention_reference(q, k, v, bias, None, 0.3, True, 4)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.sum(), [q, k, v, bias])
    ref_grads = torch.autograd.grad(ref_out.sum(), [q, k, v, bias])
    for g, w in zip(grads, ref_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_custom_op_opcheck() -> None:
    q, k, v = rand(1, 2, 5, 16), rand(1, 1, 7, 16), rand(1, 1, 7, 16)
    mask = torch.rand(1, 1, 5, 7) > 0.3
    torch.library.opcheck(torch.ops.tilewright.flash_attention.default,
                          (q, k, v, None, mask, None, 0.25, False, 0, 0.0))


def test_op_without_kernels_uses_math_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors with interpreter mode off: the op computes the same function in torch."""
    from tilewright.config import config

    q, k, v = rand(1, 4, 9, 16), rand(1, 2, 11, 16), rand(1, 2, 11, 16)
    mask = torch.rand(1, 1, 9, 11) > 0.3
    args = (None, mask, None, 0.3, True, 2, 0.0)
    out_k, _ = torch.ops.tilewright.flash_attention(q, k, v, *args)
    g_k = torch.autograd.grad(out_k.sum(), [q, k, v])
    monkeypatch.setattr(config, "interpret", False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out_r, _ = torch.ops.tilewright.flash_attention(q, k, v, *args)
    g_r = torch.autograd.grad(out_r.sum(), [q, k, v])
    torch.testing.assert_close(out_r, out_k, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_r, g_k):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- the staged loops: unmasked blocks below the diagonal, then the masked diagonal and tails ----------

@pytest.mark.parametrize("m,n,d,causal,offset", [
    (32, 64, 32, False, 0),    # sizes divide every block, BLOCK_D == D: no masked stage at all
    (64, 64, 16, True, 0),     # the diagonal is the only masked block of each row block
    (48, 64, 32, True, 16),    # bottom-right causal, sizes divide
    (37, 53, 24, True, 16),    # nothing divides, BLOCK_D != D
    (53, 37, 16, True, -16),   # negative offset: leading rows see no key
    (37, 53, 40, False, 0),
])
@pytest.mark.parametrize("tiles", [(16, 32), (32, 16)])
def test_staged_loops_match_reference(m: int, n: int, d: int, causal: bool, offset: int,
                                      tiles: tuple[int, int]) -> None:
    cfg = {"BLOCK_M": tiles[0], "BLOCK_N": tiles[1], "num_warps": 2, "num_stages": 2}
    check(rand(1, 2, m, d), rand(1, 2, n, d), rand(1, 2, n, d), causal=causal, offset=offset, config=cfg)


@pytest.mark.parametrize("m,n", [(32, 48), (29, 45)])
def test_staged_loops_with_mask_and_gqa(m: int, n: int) -> None:
    mask = torch.rand(1, 4, m, n) > 0.4
    mask[:, :, 3] = False  # a row with no key at all
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 2}
    check(rand(1, 4, m, 32), rand(1, 2, n, 32), rand(1, 2, n, 32), mask=mask, causal=True, offset=n - m,
          config=cfg)


def test_backward_defaults_are_tutorial_like_and_shrink_not_collapse() -> None:
    space = A.backward_space(64, "float16", smem_bytes=227 * 1024)
    # the tutorial's tile on 8 warps (on 4 it spills on sm_90: tests/core/test_gpu_compile.py)
    assert space.default_config() == {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}
    small = A.backward_space(128, "float16", smem_bytes=48 * 1024)  # the default does not fit
    cfg = small.default_config()
    assert small.is_feasible(cfg)
    first = next(c for c in small.enumerate() if small.is_feasible(c))  # the old fallback: 16x16, 1 stage
    assert cfg["BLOCK_M"] * cfg["BLOCK_N"] >= 4 * first["BLOCK_M"] * first["BLOCK_N"], (cfg, first)
    fwd = A.forward_space(256, "float32", smem_bytes=99 * 1024)
    assert fwd.default_config()["BLOCK_M"] * fwd.default_config()["BLOCK_N"] > 16 * 16


def test_bfloat16_kernels_compile_for_sm90_without_upcast() -> None:
    """The compiled bf16 path (UPCAST=False: bf16 tl.dot) never runs here — the interpreter's bf16
    dot is wrong, so interpreted bf16 runs upcast (numerics: test_float16_and_bfloat16). This
    compiles every forward/backward kernel for sm_90 with bf16 pointers and UPCAST=False."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TILEWRIGHT_INTERPRET")}
    script = Path(__file__).with_name("_sm90_compile.py")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) >= {"fwd-causal", "fwd-mask-bias", "dkdv-causal", "dq-causal", "dq-bias-grad"}
    assert all(r.get("cubin_bytes", 0) > 0 for r in results.values()), results
    # the staged loops pipeline: K/V (and Q/dO) loads become asynchronous copies (none before)
    for case in ("fwd-causal", "dkdv-causal", "dq-causal"):
        assert results[case]["async_loads"] > 0, (case, results[case])


def test_register_estimate_rejects_configs_that_spill_on_sm90() -> None:
    """Configs measured to spill (ptxas -v, sm_90) are rejected by the register estimate; the
    defaults (compiled spill-free in tests/core/test_gpu_compile.py) are admitted."""
    smem = 227 * 1024
    def cfg(m: int, n: int, warps: int, stages: int) -> dict[str, int]:
        return {"BLOCK_M": m, "BLOCK_N": n, "num_warps": warps, "num_stages": stages}

    spilled = [(A.backward_space(64, "bfloat16", smem), cfg(32, 128, 4, 3)),   # 40 B spilled
               (A.backward_space(64, "bfloat16", smem), cfg(64, 128, 8, 2)),   # 16 B
               (A.backward_space(128, "bfloat16", smem), cfg(64, 128, 8, 2)),  # 1660 B
               (A.forward_space(64, "float32", smem), cfg(128, 64, 4, 3))]     # 137 KB
    for space, config in spilled:
        reason = space.check(config)
        assert reason and "registers" in reason, (config, reason)
    for d in (64, 128, 256):
        for dtype in ("bfloat16", "float16", "float32"):
            for builder, table in ((A.forward_space, A._fwd_default), (A.backward_space, A._bwd_default)):
                space = builder(d, dtype, smem)
                want = table(A.head_block(d), 4 if dtype == "float32" else 2)
                assert space.default_config() == want and space.is_feasible(want), (d, dtype, space.check(want))
