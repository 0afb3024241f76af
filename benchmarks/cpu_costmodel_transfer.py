"""Transfer stand-in for the CPU cost model: configs run with 1 thread vs 2 threads as two "devices".

Records of ``data/costmodel_cpu`` are split by the config's ``threads``; each kernel problem becomes
two ranking groups (its 1-thread configs, its 2-thread configs). A GBM trained on one side ranks
the other, with 0, 5 and 20 of the target side's kernel problems added to training
(:func:`tilewright.costmodel.train.transfer`). Usage::

    python benchmarks/cpu_costmodel_transfer.py [--json-out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from tilewright.costmodel.dataset import build_dataset  # noqa: E402
from tilewright.costmodel.gbm import GBMCostModel  # noqa: E402
from tilewright.costmodel.records import read_records  # noqa: E402
from tilewright.costmodel.train import transfer  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "costmodel_cpu"


def main(argv: list[str] | None = None) -> int:
    """Run both directions and print/write the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    records = [r for r in read_records(DATA / "records.jsonl", DATA / "records-random.jsonl") if "threads" in r.config]
    # the capability is part of the group key: one "device" per thread count
    split = [replace(r, capability=f"{r.capability}-t{r.config['threads']}") for r in records]
    data = build_dataset(split, feature_set="cpu")
    devices = sorted(set(data.devices.tolist()))
    fit = lambda d: GBMCostModel.fit(d, objective="rank")  # noqa: E731
    out = {"note": "threads=1 vs threads=2 configs as two devices (stand-in for two CPUs); loaded machine",
           "results": [transfer(data, a, b, fit=fit) for a in devices for b in devices if a != b]}
    for res in out["results"]:
        for k, v in res["shots"].items():
            g, r = v["gbm"], v["roofline"]
            print(f"{res['source'][-2:]} -> {res['target'][-2:]} +{k} target problems: gbm ρ {g['spearman']:.3f} "
                  f"regret median {g['top1_regret_median']:.1%} top-5 {g['top5_recall']:.1%} | roofline ρ "
                  f"{r['spearman']:.3f} regret median {r['top1_regret_median']:.1%} top-5 {r['top5_recall']:.1%}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
