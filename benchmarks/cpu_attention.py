"""The CPU target's fused attention kernels against CPU SDPA and eager math attention.

Forward at sequence lengths 512..4096 (batch 1, head dim 64, causal and not) and the backward at
1024, float32. Systems are timed interleaved: each round times every system (median of a few
calls), ``--rounds`` rounds; the JSON records per system the median of the round medians and the
spread (min and max round median), and the ratio SDPA time / tilewright time (> 1: the fused
kernel is faster). Eager math attention (scores materialised, softmax, matmul) is skipped at
4096 (its score tensor alone is 512 MiB). ``--threads N`` runs every system on N threads (torch's
pool and the kernels' schedule); the default is every core. A shared machine is noisy: compare
within one run.

    python -m benchmarks.cpu_attention --out benchmarks/results/<date>-cpu-attention.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .timing import bench_cpu


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Eager attention as models write it: scores, mask, softmax, matmul."""
    s = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        n = s.shape[-1]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def _time_interleaved(systems: dict[str, Callable[[], Any]], rounds: int, round_ms: float) -> dict[str, Any]:
    """Round-robin timing: {system: {median_ms, min_ms, max_ms, rounds}} over the round medians."""
    for fn in systems.values():  # warm-up (builds the kernel library once)
        fn()
    per_round: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, fn in systems.items():
            per_round[name].append(bench_cpu(fn, warmup=0, rep_ms=round_ms, min_reps=1, max_reps=5).median_ms)
    return {name: {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "rounds": ms}
            for name, ms in per_round.items()}


def _ratios(row: dict[str, Any]) -> None:
    times = row["systems"]
    tw = times["tilewright_cpu"]["median_ms"]
    row["sdpa_over_tilewright"] = times["sdpa"]["median_ms"] / tw
    # spread of the ratio: the worst and best pairing of round medians
    row["sdpa_over_tilewright_range"] = [times["sdpa"]["min_ms"] / times["tilewright_cpu"]["max_ms"],
                                         times["sdpa"]["max_ms"] / times["tilewright_cpu"]["min_ms"]]
    if "math" in times:
        row["math_over_tilewright"] = times["math"]["median_ms"] / tw


def _schedule(backward: bool, units: int, threads: int | None) -> dict[str, Any]:
    from tilewright.targets.cpu.attention import attention_space

    config = dict(attention_space(64, backward, units).default_config())
    if threads is not None:
        config["threads"] = threads
    return config


def forward_row(seq: int, heads: int, causal: bool, rounds: int, round_ms: float,
                threads: int | None = None) -> dict[str, Any]:
    """One forward case: SDPA, the fused kernel (its default schedule) and eager math attention."""
    from tilewright.targets.cpu.attention import cpu_attention_forward

    config = _schedule(False, heads, threads)
    g = torch.Generator().manual_seed(seq)
    q, k, v = (torch.randn(1, heads, seq, 64, generator=g) for _ in range(3))
    systems: dict[str, Callable[[], Any]] = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "tilewright_cpu": lambda: cpu_attention_forward(q, k, v, causal=causal, config=config),
    }
    if seq < 4096:
        systems["math"] = lambda: _math_attention(q, k, v, causal)
    err = (cpu_attention_forward(q, k, v, causal=causal)[0] - F.scaled_dot_product_attention(
        q, k, v, is_causal=causal)).abs().max().item()
    row = {"pass": "forward", "seq": seq, "heads": heads, "head_dim": 64, "batch": 1, "causal": causal,
           "dtype": "float32", "schedule": config, "max_abs_diff_vs_sdpa": err,
           "systems": _time_interleaved(systems, rounds, round_ms)}
    _ratios(row)
    return row


def backward_row(seq: int, heads: int, causal: bool, rounds: int, round_ms: float,
                 threads: int | None = None) -> dict[str, Any]:
    """One backward case: SDPA's backward (autograd on its output) against the fused backward."""
    from tilewright.targets.cpu.attention import cpu_attention_forward
    from tilewright.targets.cpu.attention_backward import cpu_attention_backward

    config = _schedule(True, heads, threads)
    g = torch.Generator().manual_seed(seq + 1)
    q, k, v, dout = (torch.randn(1, heads, seq, 64, generator=g) for _ in range(4))
    out, lse = cpu_attention_forward(q, k, v, causal=causal)
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qr, kr, vr, is_causal=causal)
    systems: dict[str, Callable[[], Any]] = {
        "sdpa": lambda: torch.autograd.grad(ref, (qr, kr, vr), dout, retain_graph=True),
        "tilewright_cpu": lambda: cpu_attention_backward(dout, q, k, v, out, lse, causal=causal, config=config),
    }
    got = cpu_attention_backward(dout, q, k, v, out, lse, causal=causal)
    want = torch.autograd.grad(ref, (qr, kr, vr), dout, retain_graph=True)
    err = max((a - b).abs().max().item() for a, b in zip(got[:3], want))
    row = {"pass": "backward", "seq": seq, "heads": heads, "head_dim": 64, "batch": 1, "causal": causal,
           "dtype": "float32", "schedule": config, "max_abs_diff_vs_sdpa": err, "systems": _time_interleaved(systems, rounds, round_ms)}
    _ratios(row)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the cases and write the JSON (``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seqs", default="512,1024,2048,4096")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-ms", type=float, default=150.0)
    parser.add_argument("--threads", type=int, default=None, help="threads of every system (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from tilewright.targets.cpu.toolchain import cpu_description, find_compiler

    started = time.perf_counter()
    rows = []
    for seq in [int(s) for s in args.seqs.split(",")]:
        for causal in (False, True):
            rows.append(forward_row(seq, args.heads, causal, args.rounds, args.round_ms, args.threads))
            print(_line(rows[-1]), flush=True)
    for causal in (False, True):
        rows.append(backward_row(1024, args.heads, causal, args.rounds, args.round_ms, args.threads))
        print(_line(rows[-1]), flush=True)
    result = {"benchmark": "cpu_attention", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": {**cpu_description(), "platform": platform.platform(),
                          "torch_threads": torch.get_num_threads(), "compiler": find_compiler().version},
              "torch": torch.__version__, "rounds": args.rounds, "rows": rows,
              "wall_s": time.perf_counter() - started}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


def _line(row: dict[str, Any]) -> str:
    times = row["systems"]
    text = (f"{row['pass']:8s} seq {row['seq']:5d} causal {row['causal']!s:5s}  "
            + "  ".join(f"{name} {t['median_ms']:8.2f} ms" for name, t in times.items())
            + f"  SDPA/tilewright {row['sdpa_over_tilewright']:.2f}"
            + " [{:.2f}-{:.2f}]".format(*row["sdpa_over_tilewright_range"]))
    return text


if __name__ == "__main__":
    main()
