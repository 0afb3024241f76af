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
from .cpu import CPU_FEATURE_NAMES, cpu_feature_vector, cpu_roofline_seconds, is_cpu_device
from .devices import device_family, device_spec
from .features import FEATURE_NAMES, feature_vector
from .noise import is_disturbed
from .records import Record
from .roofline import roofline_seconds

log = logging.getLogger(__name__)

#: Columns of the model input: the features plus the roofline estimate.
MODEL_FEATURES: tuple[str, ...] = (*FEATURE_NAMES, "log2_roofline_s")
#: Columns of the model input for native CPU kernels (same last column).
CPU_MODEL_FEATURES: tuple[str, ...] = (*CPU_FEATURE_NAMES, "log2_roofline_s")
#: Feature sets: "gpu" (Triton kernels on a GPU) and "cpu" (the native C++ target).
FEATURE_SETS: dict[str, tuple[str, ...]] = {"gpu": MODEL_FEATURES, "cpu": CPU_MODEL_FEATURES}


def feature_set_of(device: Mapping[str, object] | None) -> str:
    """"cpu" for a native CPU's device info, else "gpu"."""
    return "cpu" if is_cpu_device(device) else "gpu"


def device_key(device: Mapping[str, object] | None) -> str:
    """The family a device's records and models are keyed by: a GPU family, or for a native CPU
    ``cpu:<model>|<capability>`` (capability = digest of ISA flags and compiler)."""
    if is_cpu_device(device):
        return f"cpu:{device.get('name', '')}|{device.get('capability', '')}"  # type: ignore[union-attr]
    return device_family(str((device or {}).get("name", "")))


def model_inputs(problem: KernelProblem, configs: Sequence[Mapping[str, ConfigValue]],
                 device: Mapping[str, object] | None) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix (rows = configs, columns = :data:`MODEL_FEATURES`, or
    :data:`CPU_MODEL_FEATURES` on a native CPU) and roofline seconds."""
    if is_cpu_device(device):
        rows, roof = [], []
        for config in configs:
            seconds = cpu_roofline_seconds(problem, config, device)
            roof.append(seconds)
            rows.append([*cpu_feature_vector(problem, config, device), math.log2(seconds)])
        return (np.asarray(rows, dtype=float).reshape(len(rows), len(CPU_MODEL_FEATURES)), np.asarray(roof))
    spec = device_spec(device)
    rows, roof = [], []
    for config in configs:
        seconds = roofline_seconds(problem, config, spec)
        roof.append(seconds)
        finite = seconds if math.isfinite(seconds) else 1.0
        rows.append([*feature_vector(problem, config, device), math.log2(finite)])
    return np.asarray(rows, dtype=float).reshape(len(rows), len(MODEL_FEATURES)), np.asarray(roof)


def group_id(record: Record) -> str:
    """The ranking group of a record: kernel problem + device family (:func:`device_key`)."""
    return f"{record.problem_key}@{device_key(record.device())}"


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
        feature_set: "gpu" or "cpu" (:data:`FEATURE_SETS`).
        sources: record source per row ("cpu:model:gpt2", "cpu:random:matmul", ...).
        disturbed: per row, whether the measurement was disturbed (:func:`.noise.is_disturbed`):
            kept, counted in the metrics, optionally down-weighted in training.
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
    feature_set: str = "gpu"
    sources: np.ndarray | None = None
    disturbed: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> "Dataset":
        """Rows where ``mask`` is true."""
        idx = np.flatnonzero(mask)
        return Dataset(self.X[idx], self.y[idx], self.times[idx], self.roofline[idx], self.groups[idx],
                       self.kernels[idx], self.problems[idx], self.kinds[idx], self.devices[idx],
                       [self.records[i] for i in idx], self.feature_set,
                       None if self.sources is None else self.sources[idx],
                       None if self.disturbed is None else self.disturbed[idx])


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


def build_dataset(records: Sequence[Record], feature_set: str | None = None) -> Dataset:
    """Successful records in groups of at least two configs, with features and targets.

    Records of the same group and config measured more than once are averaged (median of
    medians) so duplicates do not weigh twice; CPU-interpreter records are ignored. One
    dataset holds one feature set: ``feature_set`` None picks "gpu" when any GPU record is
    there, else "cpu"; records of the other set are left out (logged).
    """
    if feature_set is None:
        gpu = any(not is_cpu_device(r.device()) and r.device_name != CPU_INTERPRETER for r in records)
        feature_set = "gpu" if gpu or not records else "cpu"
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {sorted(FEATURE_SETS)}, not {feature_set!r}")
    by_group: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    skipped = other = 0
    for rec in records:
        if rec.device_name == CPU_INTERPRETER:
            skipped += 1  # interpreter timings say nothing about GPU speed
        elif feature_set_of(rec.device()) != feature_set:
            other += 1
        elif rec.ok:
            by_group[group_id(rec)][rec.config_hash].append(rec)
    if skipped:
        log.warning("ignored %d records timed in the CPU interpreter", skipped)
    if other:
        log.warning("left out %d records of the other feature set (dataset: %s)", other, feature_set)
    kept: list[tuple[str, Record, float]] = []
    for gid in sorted(by_group):
        configs = by_group[gid]
        if len(configs) < 2:
            continue
        for chash in sorted(configs):
            recs = configs[chash]
            kept.append((gid, recs[0], float(np.median([r.time_median_s for r in recs]))))
    n = len(kept)
    X = np.zeros((n, len(FEATURE_SETS[feature_set])))
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
                   devices=np.asarray([device_key(r.device()) for _, r, _ in kept], dtype=object),
                   records=[r for _, r, _ in kept], feature_set=feature_set,
                   sources=np.asarray([r.source for _, r, _ in kept], dtype=object),
                   disturbed=np.asarray([is_disturbed(r) for _, r, _ in kept], dtype=bool))
