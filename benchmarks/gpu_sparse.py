"""GPU benchmark of the Triton block-sparse kernels (block-sparse attention, BSR matmul), one process.

Attention (bf16, causal, forward): tilewright's block-sparse Triton kernel over a language-model-like
block mask (attention sinks + a local window + a few random blocks per query block, ~10-20% of
the causally visible blocks) with the index given (estimation excluded) and with XAttention
estimating its own index on the GPU (estimation included), against tilewright's dense fused
attention, SDPA (flash backend) and FlexAttention (compiled, a ``BlockMask`` built from exactly the
same blocks, the same block size). Weights (bf16 activations): the Triton BSR matmul at the same
density against cuBLAS dense (float32 under torch's default flags, and bf16), and torch's own 2:4
semi-structured sparse matmul (cuSPARSELt/CUTLASS) where this torch offers it.

Every system is checked against a float64 reference before it is timed (the attention reference is
computed in query chunks on the GPU, over two heads); errors go into the JSON next to the times
(median of CUDA-event timings, L2 flushed: ``benchmarks/timing.py``). A system that fails or is
missing records its error and the rest carry on. The JSON is rewritten after every measurement,
so a run stopped by its time limit still leaves what it measured.

Usage: ``python benchmarks/gpu_sparse.py [--lengths 4096,16384] [--out FILE] [--budget-s 40]``.
Needs CUDA: without a device it exits 2 at once with a message. Written for torch 2.11 / Triton 3.6
(the GPU image) and newer.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

NO_CUDA = "gpu_sparse.py needs a CUDA device (torch.cuda.is_available() is False); nothing was measured"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=_ints, default=[4096, 16384], help="sequence lengths (comma separated)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block", type=int, default=128, help="attention block (query and key tokens)")
    p.add_argument("--sinks", type=int, default=1, help="key blocks every query block keeps")
    p.add_argument("--window", type=int, default=2, help="key blocks up to and before the diagonal")
    p.add_argument("--density", type=float, default=0.15, help="kept share of the visible blocks (per query block)")
    p.add_argument("--gemm", type=_ints, default=[4096, 4096, 4096], help="M,N,K of the weight matmuls")
    p.add_argument("--weight-density", type=float, default=0.2, help="BSR block density")
    p.add_argument("--weight-block", type=int, default=32, help="BSR block (square)")
    p.add_argument("--budget-s", type=float, default=40.0, help="stop starting measurements after this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout only)")
    args = p.parse_args(argv)
    if len(args.gemm) != 3:
        p.error("--gemm takes M,N,K")
    return args


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", ",").split(",") if x]


def require_cuda() -> None:
    """Exit with status 2 and a clear message when there is no usable CUDA device."""
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        raise SystemExit(2)


# -- the block mask ----------------------------------------------------------------------------

def lm_block_mask(batch: int, heads: int, m: int, n: int, block: int, sinks: int, window: int, density: float,
                  causal: bool = True, seed: int = 0) -> torch.Tensor:
    """bool [batch, heads, nmb, nkb]: the first ``sinks`` key blocks, the ``window`` key blocks
    ending at the diagonal, then random visible blocks (per head) until a query block keeps
    ``density`` of its visible blocks; only causally visible blocks are kept."""
    from tilewright.sparsity.attention.index import visible_blocks

    nmb, nkb = -(-m // block), -(-n // block)
    visible = visible_blocks(m, n, block, causal)
    cols = torch.arange(nkb)[None, :]
    diag = (torch.arange(nmb)[:, None] * block + block - 1).clamp(max=m - 1) // block  # last query's key block
    fixed = (cols < sinks) | ((cols <= diag) & (cols > diag - window))
    mask = (fixed & visible).expand(batch, heads, nmb, nkb).clone()
    want = (density * visible.sum(-1)).round().long()                       # kept blocks per query block
    extra = (want - mask.sum(-1)).clamp(min=0)                               # [batch, heads, nmb]
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand((batch, heads, nmb, nkb), generator=g).masked_fill(~visible | mask, -1.0)
    rank = scores.argsort(-1, descending=True).argsort(-1)
    return mask | ((rank < extra[..., None]) & (scores > 0))


def block_index(mask: torch.Tensor, m: int, n: int, block: int, causal: bool = True) -> Any:
    """tilewright's :class:`BlockIndex` of ``mask``."""
    from tilewright.sparsity.attention.index import BlockIndex

    return BlockIndex.from_mask(mask, m, n, block, causal)


def flex_block_mask(mask: torch.Tensor, m: int, n: int, block: int, device: str, causal: bool = True) -> Any:
    """A FlexAttention ``BlockMask`` keeping exactly the blocks of ``mask`` (causal inside them),
    with FlexAttention's block size set to ``block``."""
    from torch.nn.attention.flex_attention import create_block_mask

    blocks = mask.to(device)

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        keep = blocks[b, h, q_idx // block, kv_idx // block]
        return keep & (kv_idx <= q_idx) if causal else keep

    batch, heads = int(mask.shape[0]), int(mask.shape[1])
    return create_block_mask(mask_mod, batch, heads, m, n, device=device, BLOCK_SIZE=block)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, block: int,
                        chunk: int = 1024) -> torch.Tensor:
    """Causal attention in float64 over the kept blocks of ``mask`` (None: dense), in query chunks."""
    m, n, d = q.shape[2], k.shape[2], q.shape[3]
    q64, k64, v64 = q.double(), k.double(), v.double()
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    keys = torch.arange(n, device=q.device)
    for r0 in range(0, m, chunk):
        rows = torch.arange(r0, min(m, r0 + chunk), device=q.device)
        s = (q64[:, :, rows] @ k64.transpose(-1, -2)) / math.sqrt(d)
        keep = keys[None, :] <= rows[:, None]
        if mask is not None:
            keep = keep & mask.to(q.device)[:, :, rows // block][..., keys // block]
        out[:, :, rows] = torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v64
    return out


def _error(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    diff = (got.double() - want).abs()
    return {"max_abs": float(diff.max()), "rel_l2": float(diff.norm() / want.norm().clamp_min(1e-30))}


# -- measuring ----------------------------------------------------------------------------------

class Results:
    """The JSON document, rewritten after every record."""

    def __init__(self, out: Path | None, meta: dict[str, Any]) -> None:
        self.out, self.doc = out, {"meta": meta, "attention": [], "weights": []}

    def add(self, section: str, record: dict[str, Any]) -> None:
        """Append ``record`` to ``section`` and save."""
        self.doc[section].append(record)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.doc, indent=1, default=str))


def measure(name: str, run: Callable[[], Any], check: Callable[[Any], dict[str, float]] | None,
            device: torch.device, **extra: Any) -> dict[str, Any]:
    """Check ``run``'s result, then time it; every failure becomes a field of the record."""
    from benchmarks.timing import bench_gpu

    record: dict[str, Any] = {"system": name, **extra}
    try:
        t0 = time.perf_counter()
        result = run()
        torch.cuda.synchronize(device)
        record["first_call_s"] = round(time.perf_counter() - t0, 3)
        if check is not None:
            record["error"] = check(result)
        record["time"] = bench_gpu(run, device, rep_ms=60.0).to_dict()
    except Exception as exc:  # noqa: BLE001 - recorded, the other systems carry on
        record["failed"] = f"{type(exc).__name__}: {exc}"[:500]
    return record


def bench_attention(args: argparse.Namespace, n: int, device: torch.device, results: Results) -> None:
    """Every attention system at length ``n`` (see the module docstring)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmarks.sparse_attention import lm_like_inputs
    from tilewright.sparsity.attention.op import build_index
    from tilewright.targets.triton.attention.launch import flash_attention_forward
    from tilewright.targets.triton.attention.sparse import triton_block_sparse_forward

    h, d, block = args.heads, args.head_dim, args.block
    q, k, v = (t.to(device, torch.bfloat16) for t in lm_like_inputs(1, h, h, n, d, seed=args.seed))
    mask = lm_block_mask(1, h, n, n, block, args.sinks, args.window, args.density, True, args.seed)
    index = block_index(mask, n, n, block).to(device)
    shape = {"length": n, "heads": h, "head_dim": d, "block": block, "density": round(index.density(), 4)}
    sub = slice(0, 2)  # the float64 references cover two heads
    want_sparse = reference_attention(q[:, sub], k[:, sub], v[:, sub], mask[:, sub], block)
    want_dense = reference_attention(q[:, sub], k[:, sub], v[:, sub], None, block)

    def check(want: torch.Tensor) -> Callable[[Any], dict[str, float]]:
        return lambda out: _error((out[0] if isinstance(out, tuple) else out)[:, sub], want)

    def xattention() -> Any:
        est = build_index("xattention", {"block": block}, q, k, causal=True, backend="triton")
        return triton_block_sparse_forward(q, k, v, est, causal=True)

    est = build_index("xattention", {"block": block}, q, k, causal=True, backend="triton")
    est_mask = est.to("cpu").to_mask()
    want_est = reference_attention(q[:, sub], k[:, sub], v[:, sub], est_mask[:, sub], block)
    systems: list[tuple[str, Callable[[], Any], Callable[[Any], dict[str, float]], dict[str, Any]]] = [
        ("tw_block_sparse", lambda: triton_block_sparse_forward(q, k, v, index, causal=True), check(want_sparse),
         {}),
        ("tw_block_sparse+xattention_estimate", xattention, check(want_est),
         {"estimated_density": round(est.density(), 4),
          "estimate_error_vs_dense": _error(want_est, want_dense)}),
        ("tw_dense_fused", lambda: flash_attention_forward(q, k, v, causal=True), check(want_dense), {}),
    ]

    def sdpa() -> Any:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    systems.append(("sdpa_flash", sdpa, check(want_dense), {}))
    try:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
        block_mask = flex_block_mask(mask, n, n, block, str(device))
        systems.append(("flex_attention_block_mask", lambda: flex(q, k, v, block_mask=block_mask),
                        check(want_sparse), {}))
    except Exception as exc:  # noqa: BLE001 - an older torch: recorded
        results.add("attention", {**shape, "system": "flex_attention_block_mask", "failed": str(exc)[:500]})
    for name, run, chk, extra in systems:
        if time.perf_counter() - START > args.budget_s:
            results.add("attention", {**shape, "system": name, "skipped": "time budget spent"})
            continue
        results.add("attention", {**shape, **measure(name, run, chk, device, **extra)})


def bench_weights(args: argparse.Namespace, device: torch.device, results: Results) -> None:
    """The Triton BSR matmul, cuBLAS dense (float32, bf16) and torch's 2:4 sparse matmul."""
    from tilewright.sparsity.weights import BlockSparseWeight, prune_blocks
    from tilewright.targets.triton.sparse_matmul import bsr_matmul

    m, n, k = args.gemm
    g = torch.Generator().manual_seed(args.seed)
    w = torch.randn(n, k, generator=g) / math.sqrt(k)
    x = torch.randn(m, k, generator=g).to(device, torch.bfloat16)
    bs = (args.weight_block, args.weight_block)
    bsr = BlockSparseWeight.from_dense(w, prune_blocks(w, args.weight_density, bs), bs)
    w_bsr = bsr.to_dense().to(device)
    vals, cols, rows = bsr.values.to(device), bsr.col_idx.to(device), bsr.row_ptr.to(device)
    shape = {"m": m, "n": n, "k": k}
    want_bsr = x.double() @ w_bsr.double().T

    def check(want: torch.Tensor) -> Callable[[Any], dict[str, float]]:
        return lambda y: _error(y, want)

    w32, w16 = w.to(device), w.to(device, torch.bfloat16)
    want_dense = x.double() @ w32.double().T
    x32 = x.float()
    systems: list[tuple[str, Callable[[], Any], Callable[[Any], dict[str, float]], dict[str, Any]]] = [
        ("tw_bsr_matmul", lambda: bsr_matmul(x, vals, cols, rows, None, n, k, bs), check(want_bsr),
         {"density": round(bsr.density, 4), "block": list(bs)}),
        ("cublas_dense_fp32", lambda: x32 @ w32.T, check(want_dense), {}),
        ("cublas_dense_bf16", lambda: x @ w16.T, check(want_dense), {}),
    ]
    try:
        from torch.sparse import to_sparse_semi_structured

        from tilewright.sparsity.weights import prune_nm

        w24 = (w * prune_nm(w)).to(device, torch.bfloat16)
        w24_sparse = to_sparse_semi_structured(w24)
        want_24 = x.double() @ w24.double().T
        systems.append(("torch_semi_structured_2:4_bf16", lambda: torch.mm(w24_sparse, x.T).T, check(want_24), {}))
        systems.append(("cublas_dense_bf16_2:4_pruned", lambda: x @ w24.T, check(want_24), {}))
    except Exception as exc:  # noqa: BLE001 - not built into this torch, or not this GPU
        results.add("weights", {**shape, "system": "torch_semi_structured_2:4_bf16", "failed": str(exc)[:500]})
    for name, run, chk, extra in systems:
        if time.perf_counter() - START > args.budget_s:
            results.add("weights", {**shape, "system": name, "skipped": "time budget spent"})
            continue
        results.add("weights", {**shape, **measure(name, run, chk, device, **extra)})


START = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every system that ran matched its reference within bf16 error."""
    args = parse_args(argv)
    require_cuda()
    import triton

    device = torch.device("cuda")
    meta = {"torch": torch.__version__, "triton": triton.__version__, "gpu": torch.cuda.get_device_name(),
            "capability": list(torch.cuda.get_device_capability()), "args": vars(args)}
    results = Results(args.out, meta)
    bench_weights(args, device, results)  # quick (no torch.compile) before the attention lengths
    for n in args.lengths:
        bench_attention(args, n, device, results)
    records = results.doc["attention"] + results.doc["weights"]
    bad = [r["system"] for r in records if "error" in r and not r["error"]["rel_l2"] < 2e-2]
    results.doc["meta"]["mismatches"] = bad
    if args.out is not None:
        args.out.write_text(json.dumps(results.doc, indent=1, default=str))
    print(json.dumps(results.doc, indent=1, default=str))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
