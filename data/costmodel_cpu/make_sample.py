"""Pick a small, deterministic sample of the CPU records (whole kernel problems) for the tests.

Usage: python data/costmodel_cpu/make_sample.py records.jsonl,records-random.jsonl sample.jsonl 24
"""
import json, sys, collections, random
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(l) for f in src.split(",") for l in open(f) if l.strip()]
groups = collections.defaultdict(list)
for r in rows:
    groups[r["problem_key"]].append(r)
ok = {k: v for k, v in groups.items() if sum(r["failure"] is None for r in v) >= 4}
by_src = collections.defaultdict(list)
for k, v in sorted(ok.items()):
    by_src[v[0]["source"].split(":")[1] + ":" + v[0]["kind"]].append(k)
rng = random.Random(0)
pick = []
for key in sorted(by_src):
    pick += rng.sample(by_src[key], min(3, len(by_src[key])))
pick = sorted(pick)[:n]
with open(dst, "w") as fh:
    for k in pick:
        for r in groups[k]:
            fh.write(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n")
print(len(pick), "problems", sum(len(groups[k]) for k in pick), "records")
