"""Turn measurement records into a training matrix for the learned cost model.

Rows are successful records; a *group* is one kernel problem on one device family (the unit
whose configs are ranked against each other). The target is the per-group normalized log
time ``log2(t) - mean(log2(t) over the group)``: it removes the problem's scale so one model
learns how configs compare, which is all ranking needs. Groups with fewer than two successful
configs carry no ranking information and are dropped.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..schedule.device import CPU_INTERPRETER
from ..schedule.problem import KernelProblem
from ..schedule.space import ConfigValue
from .devices import device_family, device_spec
from .features import FEATURE_NAMES, feature_vector
from .records import Record
from .roofline import roofline_seconds

log = logging.getLogger(__name__)

#: Columns of the model input: the features plus the roofline estimate.
MODEL_FEATURES: tuple[str, ...] = (*FEATURE_NAMES, "log2_roofline_s")


def model_inputs(problem: KernelProblem, configs: Sequence[Mapping[str, ConfigValue]],
                 device: Mapping[str, object] | None) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix (rows = configs, columns = :data:`MODEL_FEATURES`) and roofline seconds."""
    spec = device_spec(device)
    rows, roof = [], []
    for config in configs:
        seconds = roofline_seconds(problem, config, spec)
        roof.append(seconds)
        finite = seconds if math.isfinite(seconds) else 1.0
        rows.append([*feature_vector(problem, config, device), math.log2(finite)])
    return np.asarray(rows, dtype=float).reshape(len(rows), len(MODEL_FEATURES)), np.asarray(roof)


def group_id(record: Record) -> str:
    """The ranking group of a record: kernel problem + device family."""
    return f"{record.problem_key}@{device_family(record.device_name)}"


@dataclass
class Dataset:
    """Training data: ``X`` rows, targets ``y``, measured ``times`` and per-row group labels.

    Attributes:
        X: features, shape (rows, len(MODEL_FEATURES)).
        y: per-group normalized log2 time.
        times: measured median seconds.
        roofline: roofline estimate in seconds per row.
        groups: group id per row (problem key + device family).
        kernels: kernel fingerprint per row.
        problems: problem key per row (kernel + shapes, any device).
        kinds: kernel kind per row.
        devices: device family per row.
        records: the successful records, row-aligned.
    """

    X: np.ndarray
    y: np.ndarray
    times: np.ndarray
    roofline: np.ndarray
    groups: np.ndarray
    kernels: np.ndarray
    problems: np.ndarray
    kinds: np.ndarray
    devices: np.ndarray
    records: list[Record]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> "Dataset":
        """Rows where ``mask`` is true."""
        idx = np.flatnonzero(mask)
        return Dataset(self.X[idx], self.y[idx], self.times[idx], self.roofline[idx], self.groups[idx],
                       self.kernels[idx], self.problems[idx], self.kinds[idx], self.devices[idx],
                       [self.records[i] for i in idx])


def center_per_group(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` minus their mean within each group."""
    values = np.asarray(values, dtype=float)
    out = np.empty_like(values)
    for g in np.unique(groups):
        mask = groups == g
        out[mask] = values[mask] - values[mask].mean()
    return out


def normalized_log_time(times: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``log2(t)`` minus its mean within each group."""
    return center_per_group(np.log2(times), groups)


def build_dataset(records: Sequence[Record]) -> Dataset:
    """Successful records in groups of at least two configs, with features and targets.

    Records of the same group and config measured more than once are averaged (median of
    medians) so duplicates do not weigh twice; CPU-interpreter records are ignored.
    """
    by_group: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    skipped = 0
    for rec in records:
        if rec.device_name == CPU_INTERPRETER:
            skipped += 1  # interpreter timings say nothing about GPU speed
        elif rec.ok:
            by_group[group_id(rec)][rec.config_hash].append(rec)
    if skipped:
        log.warning("ignored %d records timed in the CPU interpreter", skipped)
    kept: list[tuple[str, Record, float]] = []
    for gid in sorted(by_group):
        configs = by_group[gid]
        if len(configs) < 2:
            continue
        for chash in sorted(configs):
            recs = configs[chash]
            kept.append((gid, recs[0], float(np.median([r.time_median_s for r in recs]))))
    n = len(kept)
    X = np.zeros((n, len(MODEL_FEATURES)))
    roof = np.zeros(n)
    cache: dict[str, KernelProblem] = {}
    for i, (gid, rec, _) in enumerate(kept):
        problem = cache.setdefault(gid, rec.problem())
        xi, ri = model_inputs(problem, [rec.config], rec.device())
        X[i], roof[i] = xi[0], ri[0]
    times = np.asarray([t for _, _, t in kept], dtype=float)
    groups = np.asarray([g for g, _, _ in kept], dtype=object)
    return Dataset(X=X, y=normalized_log_time(times, groups) if n else np.zeros(0), times=times,
                   roofline=roof, groups=groups,
                   kernels=np.asarray([r.fingerprint for _, r, _ in kept], dtype=object),
                   problems=np.asarray([r.problem_key for _, r, _ in kept], dtype=object),
                   kinds=np.asarray([r.kind for _, r, _ in kept], dtype=object),
                   devices=np.asarray([device_family(r.device_name) for _, r, _ in kept], dtype=object),
                   records=[r for _, r, _ in kept])
