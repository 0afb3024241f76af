"""GPU benchmark: tilewright convolution kernels and conv blocks vs cuDNN (eager, max-autotune).

Shapes are the convolutions of ResNet-50 and ConvNeXt-T (224x224 inputs), in fp16 and bf16,
batch 1 and 32, channels-last by default (cuDNN's fast layout for half types). Every row
times three implementations *in the same run*, so the ratios are comparable:

- ``cudnn_eager``: ``torch.nn.functional.conv2d`` (+ the block's epilogue ops) in eager mode;
- ``max_autotune``: the same function under ``torch.compile(mode="max-autotune-no-cudagraphs")``
  (max-autotune without inductor's own CUDA graphs: every implementation is timed by
  replaying one CUDA graph, ``--timing cudagraph``, so host overhead is excluded alike);
- ``tilewright``: our generated kernel with the epilogue fused (best of ``--tune`` configs
  from the schedule space, default config first).

``ratio_*`` = baseline time / tilewright time (> 1 means tilewright is faster).

Usage::

    python benchmarks/conv_bench.py --out benchmarks/results/conv_h100.json
    python benchmarks/conv_bench.py --quick --no-max-autotune --out /tmp/conv.json

Needs CUDA; on a machine without a GPU it refuses (exit status 2) instead of measuring the
interpreter.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("conv_bench")
#: Where inputs live; tests set "cpu" (with TILEWRIGHT_INTERPRET=1) to check the code paths.
DEVICE = "cuda"


@dataclass(frozen=True)
class Case:
    """One convolution (or block) to time. ``block`` names the fused epilogue chain."""

    model: str
    name: str
    c_in: int
    c_out: int
    size: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    block: str = "conv"  # conv | conv_bias_relu | conv_bias_add_relu | conv_bias | bottleneck


RESNET50 = [
    Case("resnet50", "stem7x7", 3, 64, 224, 7, 2, 3, block="conv_bias_relu"),
    Case("resnet50", "l1.1x1a", 64, 64, 56, 1, block="conv_bias_relu"),
    Case("resnet50", "l1.3x3", 64, 64, 56, 3, 1, 1, block="conv_bias_relu"),
    Case("resnet50", "l1.1x1b+res", 64, 256, 56, 1, block="conv_bias_add_relu"),
    Case("resnet50", "l2.3x3s2", 128, 128, 56, 3, 2, 1, block="conv_bias_relu"),
    Case("resnet50", "l2.down1x1s2", 256, 512, 56, 1, 2, block="conv_bias"),
    Case("resnet50", "l3.3x3", 256, 256, 14, 3, 1, 1, block="conv_bias_relu"),
    Case("resnet50", "l3.1x1b+res", 256, 1024, 14, 1, block="conv_bias_add_relu"),
    Case("resnet50", "l4.3x3", 512, 512, 7, 3, 1, 1, block="conv_bias_relu"),
    Case("resnet50", "l4.1x1b+res", 512, 2048, 7, 1, block="conv_bias_add_relu"),
    Case("resnet50", "block.l1", 256, 64, 56, 1, block="bottleneck"),
    Case("resnet50", "block.l3", 1024, 256, 14, 1, block="bottleneck"),
]
CONVNEXT_T = [
    Case("convnext_t", "stem4x4s4", 3, 96, 224, 4, 4, block="conv_bias"),
    Case("convnext_t", "s1.dw7x7", 96, 96, 56, 7, 1, 3, 96, block="conv_bias"),
    Case("convnext_t", "s2.dw7x7", 192, 192, 28, 7, 1, 3, 192, block="conv_bias"),
    Case("convnext_t", "s3.dw7x7", 384, 384, 14, 7, 1, 3, 384, block="conv_bias"),
    Case("convnext_t", "s4.dw7x7", 768, 768, 7, 7, 1, 3, 768, block="conv_bias"),
    Case("convnext_t", "down2x2s2", 96, 192, 56, 2, 2, block="conv_bias"),
    Case("convnext_t", "block.s3", 384, 384, 14, 7, 1, 3, 384, block="convnext_block"),
]
QUICK = {"stem7x7", "l1.3x3", "l3.1x1b+res", "block.l1", "s1.dw7x7", "s4.dw7x7", "block.s3"}


#: "cudagraph" (default: replays a CUDA graph, so host overhead of every implementation is
#: excluded) or "do_bench" (plain launches, host overhead included).
TIMING = "cudagraph"


def _bench(fn: Callable[[], Any]) -> tuple[float, str]:
    """Median milliseconds and the timing method actually used."""
    from triton.testing import do_bench, do_bench_cudagraph

    if TIMING == "cudagraph":
        try:
            return float(do_bench_cudagraph(fn, rep=100, return_mode="median")), "cudagraph"
        except Exception as exc:  # noqa: BLE001 - fall back to plain launches, say so
            log.warning("CUDA-graph timing failed (%s); timing plain launches", exc)
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median")), "do_bench"


def _cl(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.to(memory_format=torch.channels_last) if layout == "nhwc" else t.contiguous()


def _conv_inputs(case: Case, batch: int, dtype: torch.dtype, layout: str) -> dict[str, Any]:
    dev = DEVICE
    x = _cl(torch.randn(batch, case.c_in, case.size, case.size, device=dev, dtype=dtype), layout)
    w = torch.randn(case.c_out, case.c_in // case.groups, case.kernel, case.kernel, device=dev,
                    dtype=dtype) / (case.c_in // case.groups * case.kernel ** 2) ** 0.5
    b = torch.randn(case.c_out, device=dev, dtype=dtype) * 0.1
    out_size = (case.size + 2 * case.padding - case.kernel) // case.stride + 1
    res = _cl(torch.randn(batch, case.c_out, out_size, out_size, device=dev, dtype=dtype), layout)
    return {"x": x, "w": w, "b": b, "res": res}


def _reference_fn(case: Case, t: dict[str, Any]) -> Callable[[], torch.Tensor]:
    s, p, g = case.stride, case.padding, case.groups

    def conv() -> torch.Tensor:
        y = F.conv2d(t["x"], t["w"], None if case.block == "conv" else t["b"], s, p, 1, g)
        if case.block == "conv_bias_relu":
            y = F.relu(y)
        elif case.block == "conv_bias_add_relu":
            y = F.relu(y + t["res"])
        return y
    return conv


def _tilewright_fn(case: Case, t: dict[str, Any], config: dict[str, Any] | None) -> Callable[[], torch.Tensor]:
    from tilewright.targets.triton.conv.forward import prepare_conv
    from tilewright.targets.triton.conv.epilogues import EpilogueBuilder

    s, p, g = case.stride, case.padding, case.groups
    builder = EpilogueBuilder()
    if case.block != "conv":
        builder.bias()
    if case.block == "conv_bias_add_relu":
        builder.add("res", t["res"])
    if case.block in ("conv_bias_relu", "conv_bias_add_relu"):
        builder.relu()
    epi, args = builder.build()
    bias = None if case.block == "conv" else t["b"]
    return prepare_conv(t["x"], t["w"], bias, s, p, 1, g, config=config, epilogue=epi,
                        epilogue_args=args)


def _tune(case: Case, t: dict[str, Any], trials: int, seed: int) -> tuple[dict[str, Any], float]:
    from tilewright.targets.triton.conv.forward import ConvProblem, conv_schedule_space

    prob = ConvProblem.from_tensors(t["x"], t["w"], t["b"], case.stride, case.padding, 1,
                                    case.groups)
    space = conv_schedule_space(prob)
    configs = [space.default_config()]
    rest = [c for c in space.enumerate() if c != configs[0]]
    configs += random.Random(seed).sample(rest, min(len(rest), max(0, trials - 1)))
    best: tuple[dict[str, Any], float] = (configs[0], float("inf"))
    for cfg in configs:
        try:
            ms, _ = _bench(_tilewright_fn(case, t, cfg))
        except Exception as exc:  # noqa: BLE001 - a failing config is data, not a crash
            log.info("config %s failed: %s", cfg, exc)
            continue
        if ms < best[1]:
            best = (cfg, ms)
    return best


# -- blocks ------------------------------------------------------------------------------------
def _bottleneck(case: Case, batch: int, dtype: torch.dtype, layout: str, tw: bool,
                configs: dict[str, Any] | None = None) -> Callable[[], torch.Tensor]:
    """ResNet-50 bottleneck (BN folded): 1x1+relu, 3x3+relu, 1x1 + residual + relu."""
    from tilewright.targets.triton.conv.forward import prepare_conv
    from tilewright.targets.triton.conv.epilogues import EpilogueBuilder

    dev, c, mid = DEVICE, case.c_in, case.c_out
    x = _cl(torch.randn(batch, c, case.size, case.size, device=dev, dtype=dtype), layout)
    ws = [torch.randn(mid, c, 1, 1), torch.randn(mid, mid, 3, 3), torch.randn(c, mid, 1, 1)]
    ws = [(w / w[0].numel() ** 0.5).to(dev, dtype) for w in ws]
    bs = [torch.randn(w.shape[0], device=dev, dtype=dtype) * 0.1 for w in ws]
    if not tw:
        return lambda: F.relu(F.conv2d(F.relu(F.conv2d(F.relu(F.conv2d(x, ws[0], bs[0])), ws[1],
                                                       bs[1], 1, 1)), ws[2], bs[2]) + x)
    relu_epi, _ = EpilogueBuilder().bias().relu().build()
    res_epi, res_args = EpilogueBuilder().bias().add("res", x).relu().build()
    # buffers allocated once, as a compiled callable would; each launcher reuses its output
    first = prepare_conv(x, ws[0], bs[0], epilogue=relu_epi)
    h1 = first()
    second = prepare_conv(h1, ws[1], bs[1], 1, 1, epilogue=relu_epi)
    third = prepare_conv(second(), ws[2], bs[2], epilogue=res_epi, epilogue_args=res_args)

    def run() -> torch.Tensor:
        first()
        second()
        return third()
    return run


def _convnext_block(case: Case, batch: int, dtype: torch.dtype, layout: str,
                    tw: bool) -> Callable[[], torch.Tensor]:
    """ConvNeXt block: dw7x7 -> LayerNorm(C) -> Linear 4C -> GELU -> Linear -> layer-scale + x.

    The tilewright variant runs the depthwise conv as our kernel and the rest in eager torch
    (LayerNorm/MLP fusion belongs to the general fusion pass, measured by the model benchmark).
    """
    from tilewright.targets.triton.conv.forward import prepare_conv

    dev, c = DEVICE, case.c_in
    x = _cl(torch.randn(batch, c, case.size, case.size, device=dev, dtype=dtype), layout)
    dw = (torch.randn(c, 1, 7, 7) / 7).to(dev, dtype)
    db = torch.zeros(c, device=dev, dtype=dtype)
    ln = torch.nn.LayerNorm(c).to(dev, dtype)
    fc1 = torch.nn.Linear(c, 4 * c).to(dev, dtype)
    fc2 = torch.nn.Linear(4 * c, c).to(dev, dtype)
    gamma = torch.full((c,), 0.1, device=dev, dtype=dtype)  # trained-like scale (init is 1e-6)
    dwconv = prepare_conv(x, dw, db, 1, 3, 1, c) if tw else (lambda: F.conv2d(x, dw, db, 1, 3, 1, c))

    def run() -> torch.Tensor:
        h = dwconv()
        h = fc2(F.gelu(fc1(ln(h.permute(0, 2, 3, 1))))) * gamma
        return x + h.permute(0, 3, 1, 2)
    return run


def _block_fns(case: Case, batch: int, dtype: torch.dtype, layout: str) -> tuple[Callable, Callable]:
    if case.block == "bottleneck":
        return _bottleneck(case, batch, dtype, layout, False), _bottleneck(case, batch, dtype, layout, True)
    return (_convnext_block(case, batch, dtype, layout, False),
            _convnext_block(case, batch, dtype, layout, True))


# -- driver ------------------------------------------------------------------------------------
def _max_autotune(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor] | None:
    try:
        # NOTE: no inductor cudagraphs: every implementation is captured by _bench alike
        compiled = torch.compile(fn, mode="max-autotune-no-cudagraphs", fullgraph=False)
        compiled()
        return compiled
    except Exception as exc:  # noqa: BLE001
        log.warning("max-autotune failed: %s", exc)
        return None


def run_case(case: Case, batch: int, dtype: torch.dtype, layout: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time one case with all three implementations; failures are recorded, not raised."""
    row: dict[str, Any] = {"model": case.model, "name": case.name, "block": case.block,
                           "dtype": str(dtype).removeprefix("torch."), "batch": batch,
                           "layout": layout, "shape": {"c_in": case.c_in, "c_out": case.c_out,
                                                       "size": case.size, "kernel": case.kernel,
                                                       "stride": case.stride,
                                                       "padding": case.padding,
                                                       "groups": case.groups}, "ms": {}}
    torch.manual_seed(0)
    try:
        if case.block in ("bottleneck", "convnext_block"):
            ref, ours = _block_fns(case, batch, dtype, layout)
            config = None
        else:
            t = _conv_inputs(case, batch, dtype, layout)
            ref = _reference_fn(case, t)
            config, _ = _tune(case, t, args.tune, args.seed)
            ours = _tilewright_fn(case, t, config)
        expect, got = ref(), ours()
        row["max_abs_err"] = float((expect.float() - got.float()).abs().max())
        row["config"] = config
        row["timing"] = {}
        impls = {"cudnn_eager": ref, "tilewright": ours}
        if not args.no_max_autotune:
            compiled = _max_autotune(ref)
            if compiled is not None:
                impls["max_autotune"] = compiled
        for impl, fn in impls.items():
            row["ms"][impl], row["timing"][impl] = _bench(fn)
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {exc}"
    ms = row["ms"]
    if ms.get("tilewright"):
        for base in ("cudnn_eager", "max_autotune"):
            if base in ms:
                row[f"ratio_{base}"] = ms[base] / ms["tilewright"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--layouts", default="nhwc", help="nhwc and/or nchw")
    parser.add_argument("--models", default="resnet50,convnext_t")
    parser.add_argument("--quick", action="store_true", help="a representative subset of shapes")
    parser.add_argument("--tune", type=int, default=8, help="configs tried per conv (1 = default)")
    parser.add_argument("--no-max-autotune", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", choices=["cudagraph", "do_bench"], default="cudagraph",
                        help="cudagraph excludes host overhead for every implementation")
    args = parser.parse_args(argv)
    global TIMING
    TIMING = args.timing
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        print("conv_bench: needs a CUDA GPU (compares against cuDNN); refusing to time the "
              "CPU interpreter.", file=sys.stderr)
        return 2
    import triton

    cases = [c for c in RESNET50 + CONVNEXT_T if c.model in args.models.split(",")
             and (not args.quick or c.name in QUICK)]
    rows = []
    start = time.time()
    for case in cases:
        for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
            for batch in (int(b) for b in args.batches.split(",")):
                for layout in args.layouts.split(","):
                    row = run_case(case, batch, dtype, layout, args)
                    log.info("%-10s %-14s %-9s b=%-2d %s  %s  eager x%.2f  max-autotune x%s",
                             case.model, case.name, row["dtype"], batch, layout,
                             {k: round(v, 4) for k, v in row["ms"].items()},
                             row.get("ratio_cudnn_eager", float("nan")),
                             f"{row['ratio_max_autotune']:.2f}" if "ratio_max_autotune" in row else "-")
                    rows.append(row)
    report = {"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
              "torch": torch.__version__, "triton": triton.__version__, "cudnn": torch.backends.cudnn.version(),
              "python": platform.python_version(), "seconds": round(time.time() - start, 1),
              "ratio_meaning": "baseline ms / tilewright ms (>1: tilewright faster)", "timing": TIMING, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    log.info("wrote %s (%d rows)", args.out, len(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
