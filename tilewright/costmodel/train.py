"""Training and evaluation of the learned cost model.

- :func:`cross_validate`: K-fold cross-validation grouped by kernel: by default the held-out
  unit is the kernel problem (kernel + shapes, on every device), so no config of a held-out
  kernel/shape is seen in training; ``holdout="fingerprint"`` holds out every shape of a
  kernel template at once (stricter; needs many distinct templates). Each held-out group
  (kernel problem on a device) is scored for the GBM, the roofline model and the random
  ranker (:mod:`tilewright.costmodel.metrics`).
- :func:`transfer`: train on one device family, rank on another, then again with a few
  target-device kernels added to training (scored on the remaining target kernels).
- :func:`write_plots`: predicted vs measured scatter and regret by kernel kind (PNG; needs
  matplotlib, skipped with a warning otherwise).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .dataset import Dataset, build_dataset, center_per_group
from .gbm import GBMCostModel
from .metrics import GroupMetrics, group_metrics, random_group_metrics, summarize
from .records import Record

log = logging.getLogger(__name__)

MODELS = ("gbm", "roofline", "random")


def data_digest(records: Sequence[Record]) -> str:
    """sha256 over the records' config hashes, problems, devices and times (order independent)."""
    keys = sorted(f"{r.problem_key}|{r.config_hash}|{r.device_name}|{r.time_median_s}|{r.failure}"
                  for r in records)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def score_groups(data: Dataset, pred: np.ndarray, calm: bool = False) -> dict[str, list[GroupMetrics]]:
    """Per-group metrics of ``pred`` (GBM), the roofline column and the random ranker; ``calm``
    scores each group on its undisturbed rows only (groups left with fewer than two are skipped)."""
    out: dict[str, list[GroupMetrics]] = {m: [] for m in MODELS}
    keep = ~data.disturbed if calm and data.disturbed is not None else np.ones(len(data), dtype=bool)
    for g in sorted(set(data.groups.tolist())):
        mask = (data.groups == g) & keep
        if mask.sum() < 2:
            continue
        true = data.times[mask].tolist()
        kind = str(data.kinds[mask][0])
        out["gbm"].append(group_metrics(g, kind, pred[mask].tolist(), true))
        out["roofline"].append(group_metrics(g, kind, data.roofline[mask].tolist(), true))
        out["random"].append(random_group_metrics(g, kind, true))
    return out


def _folds(kernels: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """Kernel fingerprints split into ``n_splits`` shuffled folds of whole kernels."""
    unique = np.array(sorted(set(kernels.tolist())), dtype=object)
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    return [f for f in np.array_split(unique, min(n_splits, len(unique))) if len(f)]


HOLDOUTS = ("problem", "fingerprint", "model")


def _units(data: Dataset, holdout: str) -> np.ndarray:
    """Held-out unit per row; "model": every kernel of one model of the suite together (records
    whose source names a model), other kernels one problem at a time."""
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {HOLDOUTS}, not {holdout!r}")
    if holdout == "model":
        sources = data.sources if data.sources is not None else data.problems
        return np.asarray([s if ":model:" in str(s) or str(s).startswith("model:") else p
                           for s, p in zip(sources, data.problems)], dtype=object)
    return data.problems if holdout == "problem" else data.kernels


def cross_validate(data: Dataset, *, n_splits: int = 5, seed: int = 0, holdout: str = "problem",
                   fit: Callable[[Dataset], GBMCostModel] | None = None,
                   ) -> tuple[dict[str, Any], np.ndarray]:
    """Grouped K-fold CV; the held-out unit is ``holdout`` ("problem" or "fingerprint").

    Returns:
        ``({"gbm": summary, "roofline": summary, "random": summary, "folds": k}, oof_pred)``
        where ``oof_pred`` is the out-of-fold GBM prediction of every row.
    """
    fit = fit or GBMCostModel.fit
    units = _units(data, holdout)
    folds = _folds(units, n_splits, seed)
    if len(folds) < 2:
        raise ValueError(f"cross-validation needs at least two distinct {holdout}s")
    oof = np.zeros(len(data))
    for i, held in enumerate(folds):
        test = np.isin(units, held)
        model = fit(data.subset(~test))
        oof[test] = model.predict_matrix(data.X[test])
        log.info("fold %d/%d: %d %ss held out (%d rows)", i + 1, len(folds), len(held), holdout,
                 int(test.sum()))
    scored = score_groups(data, oof)
    report: dict[str, Any] = {m: summarize(rows) for m, rows in scored.items()}
    report["folds"] = len(folds)
    report["holdout"] = holdout
    report.update(disturbed_summary(data, oof))
    return report, oof


def disturbed_summary(data: Dataset, pred: np.ndarray) -> dict[str, Any]:
    """How many rows are marked disturbed (never dropped), and every model's figures when each
    kernel problem is scored on its undisturbed rows only (``calm``)."""
    flags = data.disturbed if data.disturbed is not None else np.zeros(len(data), dtype=bool)
    calm = {m: summarize(rows)["overall"] for m, rows in score_groups(data, pred, calm=True).items()}
    return {"disturbed": {"rows": int(flags.sum()), "of_rows": len(data),
                          "groups_with_any": int(len(set(data.groups[flags].tolist())))},
            "calm": calm}


def transfer(data: Dataset, source: str, target: str, *, shots: Sequence[int] = (0, 5, 20),
             seed: int = 0, holdout: str = "problem",
             fit: Callable[[Dataset], GBMCostModel] | None = None) -> dict[str, Any]:
    """How a model trained on ``source`` ranks on ``target`` (device families).

    For each ``k`` in ``shots``, the target-device records of ``k`` units (``holdout``:
    kernel problems or fingerprints) join the source data in training, and evaluation uses
    only the other target units. The source side keeps all its records (as a model shipped
    for one GPU would), so a kernel measured on both GPUs is known from the source one.
    """
    fit = fit or GBMCostModel.fit
    src, tgt = data.devices == source, data.devices == target
    if not src.any() or not tgt.any():
        raise ValueError(f"transfer needs records of both {source!r} and {target!r}")
    units = _units(data, holdout)
    kernels = np.array(sorted(set(units[tgt].tolist())), dtype=object)
    np.random.default_rng(seed).shuffle(kernels)
    results: dict[str, Any] = {"source": source, "target": target, "shots": {}}
    for k in shots:
        if k >= len(kernels):
            break
        added = np.isin(units, kernels[:k]) & tgt
        model = fit(data.subset(src | added))
        test = data.subset(tgt & ~np.isin(units, kernels[:k]))
        scored = score_groups(test, model.predict_matrix(test.X))
        results["shots"][str(k)] = {m: summarize(rows)["overall"] for m, rows in scored.items()}
        results["shots"][str(k)]["target_rows_added"] = int(added.sum())
    return results


def _objective_score(cv: Mapping[str, Any]) -> float:
    """Held-out Spearman + top-5 recall / 2 − median top-1 regret. The median, not the mean: on a
    loaded machine a few configs time 100-1000x slower once (a descheduled thread), and the mean
    regret then measures those stalls more than the ranking."""
    o = cv["gbm"]["overall"]
    return float(o["spearman"]) - float(o["top1_regret_median"]) + 0.5 * float(o["top5_recall"])


def train_model(records: Sequence[Record], *, seed: int = 0, n_splits: int = 5, holdout: str = "problem",
                evaluate: bool = True, objective: str = "logtime", feature_set: str | None = None,
                **fit_kwargs: Any) -> tuple[GBMCostModel, dict[str, Any]]:
    """Cross-validate (optional), then fit the final model on all data; returns (model, report).

    ``objective`` "auto" cross-validates every objective (:data:`~.gbm.OBJECTIVES`) and keeps
    the best on held-out kernels (``report["objectives"]`` has each one's figures). On CPU data
    the report also has ``cv_by_model``: every model of the suite held out at once.
    """
    from .gbm import OBJECTIVES

    data = build_dataset(records, feature_set=feature_set)
    if len(data) < 2:
        raise ValueError("no kernel problem has two or more successful measurements")
    candidates = list(OBJECTIVES) if objective == "auto" else [objective]
    if not evaluate:
        candidates = candidates[:1]

    def fitter(obj: str) -> Callable[[Dataset], GBMCostModel]:
        return lambda d: GBMCostModel.fit(d, seed=seed, objective=obj, **fit_kwargs)

    report: dict[str, Any] = {"rows": len(data), "groups": int(len(set(data.groups.tolist()))),
                              "kernels": int(len(set(data.kernels.tolist()))),
                              "devices": sorted(set(data.devices.tolist())),
                              "synthetic": any(r.synthetic for r in records), "feature_set": data.feature_set}
    oof = None
    chosen = candidates[0]
    if evaluate:
        runs = {obj: cross_validate(data, n_splits=n_splits, seed=seed, holdout=holdout, fit=fitter(obj))
                for obj in candidates}
        chosen = max(candidates, key=lambda o: _objective_score(runs[o][0]))
        cv, oof = runs[chosen]
        report["cv"] = cv
        report["objectives"] = {o: r[0]["gbm"]["overall"] for o, r in runs.items()}
        report["objective"] = chosen
        fit = fitter(chosen)
        if data.feature_set == "cpu" and data.sources is not None and holdout != "model":
            try:
                report["cv_by_model"] = cross_validate(data, n_splits=n_splits, seed=seed, holdout="model",
                                                       fit=fit)[0]
            except ValueError as exc:
                log.info("no by-model cross-validation: %s", exc)
        devices = report["devices"]
        report["transfer"] = [transfer(data, a, b, seed=seed, holdout=holdout, fit=fit)
                              for a in devices for b in devices if a != b]
    cv_overall = {m: report["cv"][m]["overall"] for m in ("gbm", "roofline", "random")} if evaluate else {}
    report["objective"] = chosen
    model = GBMCostModel.fit(data, seed=seed, objective=chosen,
                             extra={"data_sha256": data_digest(records), "cv_overall": cv_overall}, **fit_kwargs)
    report["_oof"] = oof
    report["_data"] = data
    return model, report


def write_plots(data: Dataset, oof: np.ndarray, cv: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``pred_vs_measured.png`` and ``regret_by_kind.png`` (median regret per kind: the mean
    is dominated by a few stalled measurements on a loaded machine) into ``out_dir``; returns paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots written")
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    pred = center_per_group(oof, data.groups)  # only the order within a kernel problem matters
    fig, ax = plt.subplots(figsize=(5, 5))
    for kind in sorted(set(data.kinds.tolist())):
        mask = data.kinds == kind
        ax.scatter(data.y[mask], pred[mask], s=4, alpha=0.5, label=kind)
    lo, hi = float(min(data.y.min(), pred.min())), float(max(data.y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set_xlabel("measured log2 time (normalized per kernel)")
    ax.set_ylabel("predicted, normalized the same way (held-out kernels)")
    ax.legend(fontsize=7)
    synthetic = any(r.synthetic for r in data.records)
    ax.set_title("SYNTHETIC records (test data)" if synthetic else ", ".join(sorted(set(data.devices.tolist()))),
                 fontsize=9)
    fig.tight_layout()
    paths.append(out / "pred_vs_measured.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    kinds = sorted(cv["gbm"]["by_kind"])
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.27
    for j, model in enumerate(MODELS):
        vals = [cv[model]["by_kind"][k].get("top1_regret_median", cv[model]["by_kind"][k]["top1_regret"])
                for k in kinds]
        ax.bar(np.arange(len(kinds)) + (j - 1) * width, vals, width, label=model)
    ax.set_xticks(np.arange(len(kinds)), kinds)
    ax.set_ylabel("median top-1 regret (time / best - 1)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.legend()
    fig.tight_layout()
    paths.append(out / "regret_by_kind.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
