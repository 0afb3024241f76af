"""CPU timings of the native C++ target against eager and Inductor, in one process.

Every case is compiled by each system first; then the systems are timed interleaved (round
robin, ``--rounds`` rounds of ``--reps`` calls each), and the JSON records each system's median
per-call time, the spread (min and max of the round medians) and the ratio to eager, plus
compile times. A shared 2-core machine is noisy: compare only within one run.

    python -m benchmarks.cpu_target --out benchmarks/results/<date>-cpu-target.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

Case = tuple[str, Callable[..., Any], Callable[[], tuple[Any, ...]]]


def _kernel_cases() -> list[Case]:
    return [
        ("softmax 2048x1024", lambda x: torch.softmax(x, -1), lambda: (torch.randn(2048, 1024),)),
        ("layer_norm 2048x1024", lambda x, w, b: F.layer_norm(x, (1024,), w, b),
         lambda: (torch.randn(2048, 1024), torch.randn(1024), torch.randn(1024))),
        ("rms_norm 2048x1024", lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
         lambda: (torch.randn(2048, 1024), torch.randn(1024))),
        ("pointwise_chain 2048x2048", lambda x, y, b: torch.sigmoid(x * y + b) * F.gelu(x) - y,
         lambda: (torch.randn(2048, 2048), torch.randn(2048, 2048), torch.randn(2048))),
    ]


def _model_cases() -> list[Case]:
    import transformers

    transformers.logging.set_verbosity_error()

    def gpt2() -> tuple[Any, ...]:
        cfg = transformers.GPT2Config(n_layer=4, n_embd=384, n_head=6, n_positions=256, vocab_size=5000,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
        return transformers.GPT2LMHeadModel(cfg).eval(), torch.randint(0, 5000, (2, 128))

    def bert() -> tuple[Any, ...]:
        cfg = transformers.BertConfig(num_hidden_layers=4, hidden_size=384, intermediate_size=1536,
                                      num_attention_heads=6, vocab_size=5000, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0, attn_implementation="eager")
        return transformers.BertModel(cfg).eval(), torch.randint(0, 5000, (2, 128))

    def llama() -> tuple[Any, ...]:
        cfg = transformers.LlamaConfig(num_hidden_layers=4, hidden_size=384, intermediate_size=1024,
                                       num_attention_heads=6, num_key_value_heads=2, vocab_size=5000,
                                       attn_implementation="eager")
        return transformers.LlamaForCausalLM(cfg).eval(), torch.randint(0, 5000, (2, 128))

    cases: list[Case] = []
    for name, make in (("gpt2 4x384 seq128 b2", gpt2), ("bert 4x384 seq128 b2", bert), ("llama-gqa 4x384 seq128 b2", llama)):
        model, tokens = make()
        cases.append((name, model, lambda tokens=tokens: (tokens,)))
    return cases


#: the tilewright target each system runs with (set before each of its calls: the target is read
#: when a graph is compiled, and each system must keep its own graphs)
_TARGETS = {"tilewright_cpu": "cpu", "tilewright_eager_fallback": "auto"}


def _tilewright_cpu(gm: Any, example_inputs: Any) -> Any:
    from tilewright.frontend.backend import tilewright_backend

    return tilewright_backend(gm, example_inputs)


def _tilewright_eager_fallback(gm: Any, example_inputs: Any) -> Any:
    from tilewright.frontend.backend import tilewright_backend

    return tilewright_backend(gm, example_inputs)


def _compile(system: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """The system's callable; tilewright systems get their own backend function so Dynamo keeps
    their compiled graphs apart (one backend name would share one cache entry)."""
    if system == "eager":
        return fn
    if system == "inductor":
        return torch.compile(fn)
    backend = {"tilewright_cpu": _tilewright_cpu, "tilewright_eager_fallback": _tilewright_eager_fallback}[system]
    return torch.compile(fn, backend=backend)


def _call(system: str, fn: Callable[..., Any], inputs: tuple[Any, ...]) -> Any:
    import tilewright

    if system in _TARGETS:
        tilewright.config.target = _TARGETS[system]
    return fn(*inputs)


def _time(fn: Callable[[], Any], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def run_case(case: Case, systems: list[str], rounds: int, reps: int) -> dict[str, Any]:
    """Compile ``case`` with every system, check outputs, time them interleaved."""
    name, fn, make = case
    inputs = make()
    torch._dynamo.reset()
    with torch.no_grad():
        want = fn(*inputs)
        compiled, compile_s = {}, {}
        for system in systems:
            start = time.perf_counter()
            compiled[system] = _compile(system, fn)
            got = _call(system, compiled[system], inputs)  # first call compiles
            compile_s[system] = time.perf_counter() - start
            a = got.logits if hasattr(got, "logits") else getattr(got, "last_hidden_state", got)
            b = want.logits if hasattr(want, "logits") else getattr(want, "last_hidden_state", want)
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
        medians: dict[str, list[float]] = {s: [] for s in systems}
        for _ in range(rounds):
            for system in systems:
                medians[system].append(_time(lambda: _call(system, compiled[system], inputs), reps))
    result: dict[str, Any] = {"case": name, "systems": {}}
    import tilewright

    result["tilewright_cpu_kernels"] = _kernel_summary(tilewright, fn, inputs) if "tilewright_cpu" in systems else None
    eager = statistics.median(medians["eager"])
    for system in systems:
        m = statistics.median(medians[system])
        result["systems"][system] = {"median_ms": m * 1e3, "min_ms": min(medians[system]) * 1e3,
                                     "max_ms": max(medians[system]) * 1e3, "speedup_vs_eager": eager / m,
                                     "compile_and_first_call_s": compile_s[system]}
    return result


def _kernel_summary(tilewright: Any, fn: Callable[..., Any], inputs: tuple[Any, ...]) -> dict[str, Any]:
    """What the CPU target made of the case: kernels by kind, coverage, ATen fallbacks."""
    tilewright.config.target = "cpu"
    with torch.no_grad():
        report = tilewright.explain(fn, *inputs)
    kinds: dict[str, int] = {}
    for k in report.kernels:
        kinds[k["kind"]] = kinds.get(k["kind"], 0) + 1
    return {"kernels": kinds, "coverage": round(report.coverage, 3),
            "aten_ops": sorted({f["op"].split(".")[1] for f in report.fallbacks if "." in f["op"]})}


def main() -> int:
    """Run the CPU comparison; writes JSON and prints a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--systems", default="eager,tilewright_cpu,tilewright_eager_fallback,inductor")
    p.add_argument("--no-models", action="store_true")
    args = p.parse_args()
    os.environ.pop("TILEWRIGHT_INTERPRET", None)
    systems = args.systems.split(",")
    cases = _kernel_cases() + ([] if args.no_models else _model_cases())
    results = []
    for case in cases:
        r = run_case(case, systems, args.rounds, args.reps)
        results.append(r)
        cells = "  ".join(f"{s} {v['median_ms']:.2f} ms ({v['speedup_vs_eager']:.2f}x)" for s, v in r["systems"].items())
        print(f"{r['case']:28s} {cells}", flush=True)
    geo = {s: statistics.geometric_mean([r["systems"][s]["speedup_vs_eager"] for r in results]) for s in systems}
    doc = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "torch": torch.__version__}, "rounds": args.rounds, "reps": args.reps,
           "results": results, "geomean_speedup_vs_eager": geo}
    try:
        from tilewright.targets.cpu.toolchain import cpu_description, find_compiler

        doc["machine"].update({"description": cpu_description(), "compiler": find_compiler().version})
    except Exception as exc:  # the description is informative only
        doc["machine"]["description_error"] = str(exc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print("geomean vs eager: " + ", ".join(f"{s} {g:.2f}x" for s, g in geo.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
