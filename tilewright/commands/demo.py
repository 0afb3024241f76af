"""``tilewright demo``: compile a small GPT-2 and ResNet, check them, and time them against eager and Inductor.

On a GPU the Triton target runs (CUDA-event timings); on a CPU the native C++ target (wall-clock
timings, the three systems interleaved), or Triton's interpreter with ``--target interpreter``
(kernels checked, not timed).
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from typing import Any, Callable


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = sub.add_parser("demo", help="compile tiny GPT-2 and ResNet models and compare them with eager",
                       description="Builds GPT-2 and ResNet from tiny transformers configs (random weights, "
                                   "nothing downloaded), compiles them with tilewright, prints the explain "
                                   "report, checks outputs against a float64 run and times them against eager "
                                   "and torch.compile's default backend (Inductor) in the same process. On a "
                                   "CPU the native C++ target runs them (--target interpreter: Triton's "
                                   "interpreter instead, checked but not timed).")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--target", choices=("auto", "cpu", "interpreter"), default="auto",
                   help="without a GPU: the native C++ target (cpu, the default when a C++ compiler is found) "
                        "or Triton's interpreter")
    p.set_defaults(func=run)


def _models(device: str, small: bool) -> list[tuple[str, Any, tuple[Any, ...]]]:
    """GPT-2 and ResNet: tiny for the interpreter, CPU-sized for the native target, larger on a GPU."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    gpt_cfg = transformers.GPT2Config(n_layer=2 if small else 4, n_embd=64 if small else 256, n_head=4,
                                      n_positions=128, vocab_size=512, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    gpt = transformers.GPT2LMHeadModel(gpt_cfg).eval().to(device)
    tokens = torch.randint(0, 512, (2, 16 if small else 128), device=device)
    res_cfg = transformers.ResNetConfig(embedding_size=8 if small else 32, hidden_sizes=[8, 16] if small else [32, 64],
                                        depths=[1, 1], num_channels=3)
    resnet = transformers.ResNetModel(res_cfg).eval().to(device)
    images = torch.randn(2 if small else 16, 3, 32 if small else 64, 32 if small else 64, device=device)
    return [("gpt2", gpt, (tokens,)), ("resnet", resnet, (images,))]


def _main(out: Any) -> Any:
    for name in ("logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    return out[0] if isinstance(out, (tuple, list)) else out


def _time_cpu(fns: dict[str, Callable[[], Any]], rounds: int = 7) -> dict[str, float]:
    """Median wall-clock ms per call of each callable, timed interleaved (round robin)."""
    import statistics

    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _cpu_timings(model: Any, inputs: tuple[Any, ...]) -> dict[str, float]:
    """eager_ms, tilewright_ms and inductor_ms of ``model`` on the CPU, compiled first, timed interleaved."""
    import torch

    with torch.no_grad():
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="tilewright")
        inductor = torch.compile(copy.deepcopy(model))
        compiled(*inputs), inductor(*inputs)  # compile both before timing
        ms = _time_cpu({"eager": lambda: model(*inputs), "tilewright": lambda: compiled(*inputs),
                        "inductor": lambda: inductor(*inputs)})
    return {f"{k}_ms": v for k, v in ms.items()}


def _time(fn: Callable[[], Any]) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit code 0 only when every model matches eager."""
    import importlib.util
    import json
    import sys

    if importlib.util.find_spec("transformers") is None:
        print("error: the demo builds its models with Hugging Face transformers; install it with "
              "pip install 'tilewright[demo]'", file=sys.stderr)
        return 2

    import torch

    gpu = torch.cuda.is_available()
    if not gpu:
        os.environ.setdefault("TILEWRIGHT_INTERPRET", "1")
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import tilewright
    from tilewright.targets import native_cpu_problem

    native = not gpu and args.target != "interpreter" and native_cpu_problem() is None
    if not gpu and args.target == "cpu" and not native:
        print(f"error: --target cpu: {native_cpu_problem()}", file=sys.stderr)
        return 2
    if native:
        tilewright.config.target = "cpu"
    elif not gpu:
        tilewright.config.interpret = True
    device = "cuda" if gpu else "cpu"
    where = torch.cuda.get_device_name() if gpu else (
        "CPU, native C++ target" if native else "CPU (Triton interpreter: kernels are checked, not timed)")
    if not args.json:
        print(f"tilewright demo on {where}")
    results = []
    ok = True
    for name, model, inputs in _models(device, small=not gpu and not native):
        torch.manual_seed(0)
        report = tilewright.explain(model, *inputs)
        with torch.no_grad():
            compiled = torch.compile(model, backend="tilewright")
            t0 = time.perf_counter()
            got = _main(compiled(*inputs)).float()
            first_call = time.perf_counter() - t0
            want = _main(model(*inputs)).float()
            ref64 = _main(copy.deepcopy(model).double()(*[i.double() if i.is_floating_point() else i
                                                          for i in inputs])).float()
        err = (got - ref64).abs().max().item()
        eager_err = (want - ref64).abs().max().item()
        passed = err <= 10 * eager_err + 1e-5
        ok &= passed
        entry: dict[str, Any] = {"model": name, "max_error_vs_float64": err, "eager_error_vs_float64": eager_err,
                                 "matches_eager": passed, "coverage": report.coverage,
                                 "kernels": len(report.kernels), "fallbacks": report.fallbacks,
                                 "compile_and_first_call_s": first_call}
        if gpu:
            with torch.no_grad():
                torch._dynamo.reset()
                inductor = torch.compile(copy.deepcopy(model))
                entry["eager_ms"] = _time(lambda: model(*inputs))
                entry["tilewright_ms"] = _time(lambda: compiled(*inputs))
                entry["inductor_ms"] = _time(lambda: inductor(*inputs))
        elif native:
            entry.update(_cpu_timings(model, inputs))
        results.append(entry)
        if not args.json:
            print(f"\n== {name} ==")
            print(report)
            verdict = "matches eager" if passed else "DOES NOT match eager"
            print(f"\n{name}: max error vs float64 {err:.2e} (eager {eager_err:.2e}) -> {verdict}")
            if gpu or native:
                print(f"{name}: eager {entry['eager_ms']:.3f} ms, tilewright {entry['tilewright_ms']:.3f} ms, "
                      f"torch.compile default {entry['inductor_ms']:.3f} ms (same process, {where})")
    if args.json:
        print(json.dumps({"device": torch.cuda.get_device_name() if gpu else ("cpu" if native else "cpu-interpreter"),
                          "results": results},
                         indent=2, default=str))
    return 0 if ok else 1
