"""End-to-end sparse attention (issue #15's last goal): a small LLaMA at 4096 tokens, 1% budget.

"A small LLaMA-style model at 4k+ tokens with a 1% budget, faster than exact, error measured on
held-out inputs", on the CPU target:

1. A HF ``LlamaForCausalLM`` built locally (4 layers, hidden 256, 4 query heads over 2 kv heads
   of dim 64, MLP 688, vocab 512, q/k/v/o biases), nothing downloaded, in three weight variants:

   - ``random``: the HF initialisation. Its attention is close to uniform over the whole
     prefix: the worst case for sparse attention (every dropped block carries its share).
   - ``local`` and ``mixed``: the same random weights with an LM-like attention structure *put
     into the weights by construction* (not trained, not a real LM): the q/k biases carry a
     relative-position kernel through RoPE (the 20 highest-frequency pairs, a per-head
     amplitude: scores fall off like a power of the distance, ~d^-2 to d^-3.5, steeper in later
     heads) and the BOS token's embedding with the k projection an attention sink
     (StreamingLLM). The q/k weights (the content part of the scores) are kept (``local``:
     content moves scores by ~1 nat) or scaled 2x (``mixed``: ~2 nats, which spreads 1-13% of
     each head's attention over the whole prefix at random). The kernel and the sink were fixed
     before any gate run and ``mixed`` was the first variant gated; ``local`` was added after
     ``mixed`` failed the 1% budget, to show where the gate starts to accept. Measured attention
     statistics (share on the sink block, share beyond 256 tokens, per layer and head) are in the
     JSON.

   There are no pretrained weights on this machine and a training run long enough to shape
   attention does not fit the time limit on this shared 2-core CPU (a 4-layer step at 2k tokens
   took 3-5 s), hence the construction; it is labelled as such in every result.
2. Calibration (``tilewright.sparsity.sparsify``, attention only: ``methods=()``,
   ``attention={"measure": True}``, budget 0.01 relative L2 of the logits) on one 4096-token
   calibration sequence; the gate tries sinks+window, XAttention and MInference settings per
   attention site and keeps a site exact unless its setting fits the budget.
3. The plan compiled (``options={"sparsity": {"plan": plan}}``) next to the exact compile and
   eager: held-out error on other sequences (relative L2 of the logits and mean KL per token,
   against eager float32), then time per forward at batch 1 x 4096, the three interleaved round
   robin in this process (medians, min, max; load averages before and after).

    python -m benchmarks.sparse_e2e --out benchmarks/results/<date>-sparse-e2e.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .cpu_target import machine

VOCAB, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, MLP = 512, 256, 4, 2, 64, 4, 688
#: the injected structure: RoPE pairs carrying the position kernel, per-head amplitude (nats per
#: pair after the 1/sqrt(d) scale), sink score (nats)
KERNEL_PAIRS, AMPLITUDES, SINK = 20, (0.6, 0.7, 0.8, 1.0), 12.0
BUDGET = 0.01


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


#: weight variants: name -> q/k weight scale of the injected structure (None: HF init, nothing injected)
VARIANTS: dict[str, float | None] = {"random": None, "local": 1.0, "mixed": 2.0}


def build(variant: str, layers: int = LAYERS) -> torch.nn.Module:
    """The benchmark's LLaMA with :data:`VARIANTS` weights (see module doc)."""
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=HIDDEN, intermediate_size=MLP,
                                   num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=VOCAB,
                                   max_position_embeddings=8192, attention_bias=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: one of {sorted(VARIANTS)}")
    content = VARIANTS[variant]
    if content is not None:
        _inject(model, content)
    return model


@torch.no_grad()
def _inject(model: torch.nn.Module, content: float) -> None:
    """Position kernel + sink through q/k biases and a rank-1 key direction (module doc)."""
    g = torch.Generator().manual_seed(123)
    sink_dir = torch.randn(HIDDEN, generator=g)
    sink_dir /= sink_dir.norm()
    model.model.embed_tokens.weight[0] += 30 * sink_dir  # the BOS token carries the sink direction
    scale_inv = math.sqrt(HEAD_DIM)  # scores are q.k / sqrt(d): products of sqrt(d) * x give x nats
    lowest = HEAD_DIM // 2 - 1  # the slowest RoPE pair: barely rotates over 4k tokens
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.q_proj.weight *= content
        attn.k_proj.weight *= content
        qb, kb = torch.zeros(HEADS, HEAD_DIM), torch.zeros(KV_HEADS, HEAD_DIM)
        for h, amp in enumerate(AMPLITUDES):
            qb[h, :KERNEL_PAIRS] = amp * scale_inv  # times kb = 1: amp nats per pair at distance 0
            qb[h, lowest] = scale_inv
        kb[:, :KERNEL_PAIRS] = 1.0
        attn.q_proj.bias.copy_(qb.reshape(-1))
        attn.k_proj.bias.copy_(kb.reshape(-1))
        sink = torch.zeros(KV_HEADS, HEAD_DIM, HIDDEN)
        sink[:, lowest, :] = sink_dir * SINK / math.sqrt(HIDDEN)  # RMS-normed BOS ~ sqrt(hidden) * sink_dir
        attn.k_proj.weight += sink.reshape(KV_HEADS * HEAD_DIM, HIDDEN)


def sequence(seed: int, length: int) -> torch.Tensor:
    """BOS (token 0) then uniform random tokens: [1, length]."""
    ids = torch.randint(1, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 0
    return ids


@torch.no_grad()
def attention_stats(model: torch.nn.Module, ids: torch.Tensor, window: int = 256) -> list[dict[str, Any]]:
    """Per layer and head: attention share on the first 64 keys (sink block) and beyond ``window``
    tokens back, averaged over every 16th query of the last three quarters."""
    from tilewright.sparsity.attention import capture_attention_inputs

    with capture_attention_inputs() as calls:
        model(ids)
    out = []
    for layer, call in enumerate(calls):
        q, k = call["q"][0].float(), call["k"][0].float()
        k = k.repeat_interleave(q.shape[0] // k.shape[0], 0)
        n = k.shape[1]
        rows = torch.arange(n // 4, n, 16)
        scores = q[:, rows] @ k.transpose(-1, -2) * (call["scale"] or q.shape[-1] ** -0.5)
        cols = torch.arange(n)[None]
        scores = scores.masked_fill(cols > rows[:, None], float("-inf"))
        p = scores.softmax(-1)
        sink = p[..., :64].sum(-1).mean(-1)
        far = p.masked_fill((cols >= rows[:, None] - window + 1) | (cols < 64), 0).sum(-1).mean(-1)
        out.append({"layer": layer, "sink_share": [round(float(x), 4) for x in sink],
                    f"beyond_{window}_share": [round(float(x), 4) for x in far]})
    return out


def _errors(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    r, o = ref.double(), out.double()
    lp, lq = F.log_softmax(r, -1), F.log_softmax(o, -1)
    return {"rel_l2": float((o - r).norm() / r.norm()), "kl_per_token": float((lp.exp() * (lp - lq)).sum(-1).mean())}


def _time_interleaved(systems: dict[str, Any], ids: torch.Tensor, rounds: int) -> dict[str, Any]:
    """Wall and process CPU seconds per forward, the systems round robin (the CPU time, summed over
    this process's threads, moves less than wall time when other sessions load the machine)."""
    wall: dict[str, list[float]] = {name: [] for name in systems}
    cpu: dict[str, list[float]] = {name: [] for name in systems}
    loads = [_load()]
    with torch.no_grad():
        for fn in systems.values():
            fn(ids)  # warm
        for _ in range(rounds):
            for name, fn in systems.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn(ids)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
            loads.append(_load())
    summary = {name: {"median_s": round(statistics.median(ts), 4), "min_s": round(min(ts), 4),
                      "max_s": round(max(ts), 4), "all_s": [round(t, 4) for t in ts],
                      "cpu_median_s": round(statistics.median(cpu[name]), 4)} for name, ts in wall.items()}
    return {"systems": summary, "rounds": rounds, "load_average_1_5_15": loads}


def run_variant(variant: str, length: int, rounds: int, holdout: int, methods: list[str]) -> dict[str, Any]:
    """Calibrate, compile, measure errors and time for one weight variant."""
    import tilewright
    from tilewright.report import collect
    from tilewright.sparsity.api import sparsify

    tilewright.config.target = "cpu"
    model = build(variant)
    calibration = [sequence(1, length)]
    held = [sequence(100 + i, length) for i in range(holdout)]
    doc: dict[str, Any] = {"variant": variant, "load_at_start": _load()}
    doc["attention_stats"] = attention_stats(model, calibration[0])
    t0 = time.perf_counter()
    plan = sparsify(model, calibration, budget=BUDGET, metric="rel_l2", methods=(),
                    attention={"methods": methods, "measure": True})
    doc["calibration_s"] = round(time.perf_counter() - t0, 1)
    doc["plan"] = plan.to_dict()
    applied = plan.applied("attention")
    print(f"[{variant}] calibrated in {doc['calibration_s']} s: {len(applied)}/{len(plan.of_kind('attention'))} "
          f"sites sparse, model error {plan.model_error}", flush=True)
    for e in plan.of_kind("attention"):
        print(f"    {e.site} {e.method} {e.params} err={e.error:.4g} exp={e.expected_speedup} "
              f"meas={e.measured_speedup} {e.note}", flush=True)

    systems: dict[str, Any] = {"eager": model}
    t0 = time.perf_counter()
    torch._dynamo.reset()
    exact = torch.compile(copy.deepcopy(model), backend="tilewright")
    with torch.no_grad():
        exact(held[0])
    systems["tilewright_exact"] = exact
    doc["compile_exact_s"] = round(time.perf_counter() - t0, 1)
    if applied:
        t0 = time.perf_counter()
        sparse = torch.compile(copy.deepcopy(model), backend="tilewright", options={"sparsity": {"plan": plan}})
        with torch.no_grad(), collect() as report:
            sparse(held[0])
        doc["compile_sparse_s"] = round(time.perf_counter() - t0, 1)
        doc["explain_approximations"] = report.to_dict()["approximations"]
        doc["sparse_kernels_ran"] = sum(1 for k in report.kernels if "block_sparse_attention" in k["name"]
                                        and k["status"] == "ran")
        systems["tilewright_sparse"] = sparse
    else:
        doc["note"] = "no attention site passed the gate: the sparse compile would be the exact one (not timed)"

    errors: dict[str, list[dict[str, float]]] = {name: [] for name in systems if name != "eager"}
    with torch.no_grad():
        for ids in held:
            ref = model(ids).logits
            for name, errs in errors.items():
                errs.append(_errors(ref, systems[name](ids).logits))
    doc["holdout_errors_vs_eager"] = {name: {"per_sequence": errs,
                                             "rel_l2_mean": statistics.mean(e["rel_l2"] for e in errs),
                                             "kl_mean": statistics.mean(e["kl_per_token"] for e in errs)}
                                      for name, errs in errors.items()}
    doc["timing"] = _time_interleaved(systems, held[0], rounds)
    med = {name: s["median_s"] for name, s in doc["timing"]["systems"].items()}
    doc["speedup_sparse_over_exact"] = round(med["tilewright_exact"] / med["tilewright_sparse"], 3) \
        if "tilewright_sparse" in med else 1.0
    if "tilewright_sparse" in med:
        cpu = {name: s["cpu_median_s"] for name, s in doc["timing"]["systems"].items()}
        doc["cpu_time_speedup_sparse_over_exact"] = round(cpu["tilewright_exact"] / cpu["tilewright_sparse"], 3)
    doc["speedup_sparse_over_eager"] = round(med["eager"] / med.get("tilewright_sparse", med["tilewright_exact"]), 3)
    doc["load_at_end"] = _load()
    print(f"[{variant}] medians {med}, held-out {json.dumps(doc['holdout_errors_vs_eager'])[:300]}", flush=True)
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--holdout", type=int, default=2, help="held-out sequences")
    parser.add_argument("--variants", nargs="+", default=["local", "mixed", "random"])
    parser.add_argument("--methods", nargs="+", default=["sinks_window", "xattention", "minference"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "sparse_e2e", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "model": {"kind": "transformers.LlamaForCausalLM (random init, built locally)", "layers": LAYERS,
                  "hidden": HIDDEN, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "mlp": MLP,
                  "vocab": VOCAB, "attention_bias": True},
        "injection": {"kernel_pairs": KERNEL_PAIRS, "amplitudes_nats_per_pair": AMPLITUDES, "sink_nats": SINK,
                      "qk_weight_scale": {k: v for k, v in VARIANTS.items() if v is not None},
                      "label": "attention structure injected into random weights by construction; not a trained LM"},
        "length": args.length, "batch": 1, "budget": BUDGET, "metric": "rel_l2 of the logits (largest per output)",
        "threads": torch.get_num_threads(), "variants": {},
    }
    for variant in args.variants:
        doc["variants"][variant] = run_variant(variant, args.length, args.rounds, args.holdout, args.methods)
        print(f"after {variant}: {time.perf_counter() - started:.0f} s", flush=True)
    doc["total_s"] = round(time.perf_counter() - started, 1)
    doc["goal"] = {"text": "small LLaMA-style model at 4k+ tokens, 1% budget, faster than exact, held-out error"}
    for name, result in doc["variants"].items():
        errs = result["holdout_errors_vs_eager"].get("tilewright_sparse")
        doc["goal"][name] = {"sparse_sites": sum(1 for e in result["plan"]["entries"]
                                                 if e["kind"] == "attention" and e["method"] != "exact"),
                             "faster_than_exact": result["speedup_sparse_over_exact"] > 1.0,
                             "speedup_wall": result["speedup_sparse_over_exact"],
                             "speedup_cpu_time": result.get("cpu_time_speedup_sparse_over_exact"),
                             "holdout_rel_l2": errs and errs["rel_l2_mean"], "holdout_kl": errs and errs["kl_mean"]}
    print(f"total {doc['total_s']} s", flush=True)
    text = json.dumps(doc, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
