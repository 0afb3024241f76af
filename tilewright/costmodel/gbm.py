"""The learned cost model: gradient-boosted trees on per-kernel normalized log time.

The prediction is ``log2(roofline seconds) + trees(features)``: the trees learn the
per-kernel-normalized residual of the measured log time over the analytical estimate.

Training uses scikit-learn's ``GradientBoostingRegressor``; the fitted trees are then exported
to plain arrays and prediction walks them with numpy, so a saved model is pure JSON data and
loading it cannot execute code (no pickle). A model file looks like::

    {"format": "tilewright-costmodel", "format_version": 1,
     "sha256": "<sha256 of the canonical JSON of payload>",
     "payload": {"model_type": "gbm", "feature_version": "1", "record_schema_version": 1,
                 "feature_names": [...], "init": ..., "learning_rate": ..., "trees": [...],
                 "devices": ["H100-SXM"], "synthetic": false, ...}}

Loading refuses files of another format (:class:`ForeignModelError`), files whose payload
does not hash to the stored digest (:class:`TamperedModelError`: accidental or careless edits;
the digest is integrity, not authenticity) and models built for other features or schemas
(:class:`IncompatibleModelError`); tree arrays are bounds-checked before use.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..schedule.problem import KernelProblem
from ..schedule.space import ConfigValue
from .base import CostModel
from .cpu import CPU_FEATURE_VERSION
from .dataset import FEATURE_SETS, MODEL_FEATURES, Dataset, device_key, feature_set_of, model_inputs, normalized_log_time
from .features import FEATURE_VERSION
from .metrics import average_ranks
from .records import SCHEMA_VERSION

log = logging.getLogger(__name__)

FORMAT = "tilewright-costmodel"
FORMAT_VERSION = 1
MODEL_TYPE = "gbm"
#: Refuse to parse model files larger than this (bytes).
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Column of the model input holding log2 of the roofline estimate (the prediction's base);
#: the last column in every feature set.
BASELINE_COLUMN = MODEL_FEATURES.index("log2_roofline_s")
#: Feature version of each feature set.
FEATURE_VERSIONS = {"gpu": FEATURE_VERSION, "cpu": CPU_FEATURE_VERSION}
#: Training objectives: "logtime" regresses the normalized log time over the roofline's;
#: "rank" regresses each config's rank percentile within its kernel problem (a pointwise
#: ranking objective: every kernel weighs the same and outlier slow configs cannot dominate).
#: "throughput" regresses 1 − best/time within the kernel problem (the normalised throughput
#: cost models of tensor compilers learn, as a loss: 0 for the fastest config, bounded by 1, so a
#: stalled measurement 1000x slower weighs no more than one 2x slower and the fast end of the
#: ranking, which top-k search needs, gets the resolution).
OBJECTIVES = ("logtime", "rank", "throughput")


def throughput_loss_target(times: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per group, ``1 − min(time) / time`` in [0, 1) (fastest 0)."""
    out = np.zeros(len(times))
    for g in np.unique(groups):
        mask = groups == g
        out[mask] = 1.0 - times[mask].min() / times[mask]
    return out


def rank_target(times: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per-group rank percentile of ``times`` in [-0.5, 0.5] (fastest lowest)."""
    out = np.zeros(len(times))
    for g in np.unique(groups):
        mask = groups == g
        n = int(mask.sum())
        out[mask] = (average_ranks(times[mask]) - 1) / max(n - 1, 1) - 0.5
    return out


class ModelFileError(ValueError):
    """A cost-model file cannot be used."""


class ForeignModelError(ModelFileError):
    """The file is not a tilewright cost model (or of an unknown format version/type)."""


class TamperedModelError(ModelFileError):
    """The payload does not match its stored sha256 digest."""


class IncompatibleModelError(ModelFileError):
    """The model was built for other features or another record schema."""


def payload_digest(payload: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON form of ``payload``."""
    canon = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canon.encode()).hexdigest()


class _Forest:
    """Regression trees as padded arrays; prediction is a vectorized walk over all trees."""

    def __init__(self, trees: Sequence[Mapping[str, Sequence[float]]], n_features: int) -> None:
        width = max((len(t["left"]) for t in trees), default=1)
        shape = (len(trees), width)
        self.left = np.full(shape, -1, dtype=np.int64)
        self.right = np.full(shape, -1, dtype=np.int64)
        self.feature = np.zeros(shape, dtype=np.int64)
        self.threshold = np.zeros(shape)
        self.value = np.zeros(shape)
        self.depth = 0
        for i, tree in enumerate(trees):
            n = _check_tree(i, tree, n_features)
            self.left[i, :n], self.right[i, :n] = tree["left"], tree["right"]
            feat = np.asarray(tree["feature"], dtype=np.int64)
            self.feature[i, :n] = np.where(feat < 0, 0, feat)
            self.threshold[i, :n], self.value[i, :n] = tree["threshold"], tree["value"]
            self.depth = max(self.depth, _tree_depth(tree["left"], tree["right"]))

    def predict_sum(self, X: np.ndarray) -> np.ndarray:
        """Sum over trees of each row's leaf value."""
        # NOTE: scikit-learn trees compare float32 inputs against float64 thresholds.
        X = X.astype(np.float32).astype(np.float64)
        n_trees = self.left.shape[0]
        if n_trees == 0 or len(X) == 0:
            return np.zeros(len(X))
        tree_idx = np.arange(n_trees)[:, None]
        node = np.zeros((n_trees, len(X)), dtype=np.int64)
        rows = np.arange(len(X))[None, :]
        for _ in range(self.depth):
            leaf = self.left[tree_idx, node] < 0
            go_left = X[rows, self.feature[tree_idx, node]] <= self.threshold[tree_idx, node]
            nxt = np.where(go_left, self.left[tree_idx, node], self.right[tree_idx, node])
            node = np.where(leaf, node, nxt)
        return self.value[tree_idx, node].sum(axis=0)


def _check_tree(i: int, tree: Mapping[str, Sequence[float]], n_features: int) -> int:
    keys = ("left", "right", "feature", "threshold", "value")
    if not isinstance(tree, Mapping) or any(not isinstance(tree.get(k), list) for k in keys):
        raise ModelFileError(f"tree {i}: needs list fields {keys}")
    n = len(tree["left"])
    if n == 0 or any(len(tree[k]) != n for k in keys):
        raise ModelFileError(f"tree {i}: fields must be non-empty and of equal length")
    for node in range(n):
        lft, rgt, feat = tree["left"][node], tree["right"][node], tree["feature"][node]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lft, rgt, feat)):
            raise ModelFileError(f"tree {i} node {node}: children and feature must be integers")
        if (lft < 0) != (rgt < 0):
            raise ModelFileError(f"tree {i} node {node}: a node needs both children or none")
        # children after their parent: guarantees the walk ends.
        if lft >= 0 and not (node < lft < n and node < rgt < n and feat < n_features and feat >= 0):
            raise ModelFileError(f"tree {i} node {node}: child or feature index out of range")
    for k in ("threshold", "value"):
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in tree[k]):
            raise ModelFileError(f"tree {i}: {k} must be finite numbers")
    return n


def _tree_depth(left: Sequence[int], right: Sequence[int]) -> int:
    depth = [0] * len(left)
    for node in range(len(left)):  # children come after parents
        if left[node] >= 0:
            depth[left[node]] = depth[right[node]] = depth[node] + 1
    return max(depth)


def export_sklearn(reg: Any) -> dict[str, Any]:
    """Plain-data form (``init``, ``learning_rate``, ``trees``) of a fitted squared-error
    ``GradientBoostingRegressor``; :class:`_Forest` predicts exactly what ``reg.predict`` does.
    """
    trees = []
    for est in reg.estimators_[:, 0]:
        t = est.tree_
        trees.append({"left": [int(v) for v in t.children_left],
                      "right": [int(v) for v in t.children_right],
                      "feature": [int(v) for v in t.feature],
                      "threshold": [float(v) for v in t.threshold],
                      "value": [float(v) for v in t.value[:, 0, 0]]})
    return {"init": float(np.ravel(reg.init_.constant_)[0]),
            "learning_rate": float(reg.learning_rate), "trees": trees}


class GBMCostModel(CostModel):
    """Gradient-boosted trees over :data:`~tilewright.costmodel.dataset.MODEL_FEATURES`.

    ``predict`` returns the predicted normalized log2 time (lower is faster; only the order
    within one call matters); configs the roofline finds infeasible get ``inf``. Immutable
    after construction; thread safe.
    """

    def __init__(self, payload: Mapping[str, Any]) -> None:
        """Build from a validated payload (use :meth:`fit`, :meth:`load` or :meth:`from_dict`)."""
        self.payload = dict(payload)
        self.feature_set = str(payload.get("feature_set", "gpu"))
        self._forest = _Forest(payload["trees"], len(FEATURE_SETS[self.feature_set]))
        self._baseline = bool(payload.get("baseline", True))
        self._init = float(payload["init"])
        self._lr = float(payload["learning_rate"])

    # -- training ----------------------------------------------------------------------------
    @classmethod
    def fit(cls, data: Dataset, *, n_estimators: int = 300, max_depth: int = 5,
            learning_rate: float = 0.05, subsample: float = 0.8, seed: int = 0,
            extra: Mapping[str, Any] | None = None, objective: str = "logtime",
            disturbed_weight: float = 1.0, min_samples_leaf: int = 5) -> "GBMCostModel":
        """Train on ``data`` with ``objective`` (:data:`OBJECTIVES`); ``extra`` is stored in the
        payload (metrics, data digest...). Rows marked disturbed (``data.disturbed``) weigh
        ``disturbed_weight`` (1: like the others; 0 would leave them out)."""
        from sklearn.ensemble import GradientBoostingRegressor

        if len(data) < 2:
            raise ValueError("need at least two successful measurements to train")
        reg = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=max_depth,
                                        learning_rate=learning_rate, subsample=subsample,
                                        min_samples_leaf=min_samples_leaf, random_state=seed)
        # NOTE: the trees learn the residual over the roofline (both normalized per group), so
        # the analytical model is the starting point and the data only has to teach corrections.
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
        weight = np.ones(len(data))
        if data.disturbed is not None:
            weight[data.disturbed] = disturbed_weight
        if objective in ("rank", "throughput"):
            target = rank_target if objective == "rank" else throughput_loss_target
            reg.fit(data.X, target(data.times, data.groups), sample_weight=weight)
        else:
            baseline = normalized_log_time(np.exp2(data.X[:, BASELINE_COLUMN]), data.groups)
            reg.fit(data.X, data.y - baseline, sample_weight=weight)
        records = data.records
        payload: dict[str, Any] = {
            "model_type": MODEL_TYPE,
            "feature_version": FEATURE_VERSIONS[data.feature_set],
            "record_schema_version": SCHEMA_VERSION,
            "feature_names": list(FEATURE_SETS[data.feature_set]),
            "target": {"rank": "rank percentile of the config within its kernel problem",
                       "throughput": "1 - best time / time within the kernel problem"}.get(
                objective, "log2(time) - log2(roofline), each minus its mean over the kernel problem"),
            **export_sklearn(reg),
            "devices": sorted({device_key(r.device()) for r in records}),
            "device_names": sorted({r.device_name for r in records}),
            "triton_versions": sorted({r.triton_version for r in records}),
            "synthetic": any(r.synthetic for r in records),
            "n_records": len(records),
            "n_groups": int(len(set(data.groups.tolist()))),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "hyperparameters": {"n_estimators": n_estimators, "max_depth": max_depth,
                                "learning_rate": learning_rate, "subsample": subsample,
                                "seed": seed, "min_samples_leaf": min_samples_leaf,
                                **({"disturbed_weight": disturbed_weight} if disturbed_weight != 1.0 else {})},
        }
        if data.feature_set != "gpu":  # GPU model files stay as they were
            payload.update({"feature_set": data.feature_set, "objective": objective,
                            "baseline": objective == "logtime"})
        payload.update(extra or {})
        log.info("trained GBM on %d rows / %d groups", len(records), payload["n_groups"])
        return cls(payload)

    # -- prediction --------------------------------------------------------------------------
    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        """Predicted log2 time (up to a per-problem offset) for rows in :data:`MODEL_FEATURES` order."""
        X = np.asarray(X, dtype=float)
        base = X[:, -1] if self._baseline else 0.0
        return base + self._init + self._lr * self._forest.predict_sum(X)

    def predict(self, problem: KernelProblem, configs: Sequence[Mapping[str, ConfigValue]],
                device: Mapping[str, object] | None = None) -> list[float]:
        """Predicted normalized log2 time per config (lower is faster; ``inf`` if infeasible)."""
        if not configs:
            return []
        if feature_set_of(device) != self.feature_set:
            raise ValueError(f"this model scores {self.feature_set} kernels, not those of {device_key(device)}")
        X, roof = model_inputs(problem, configs, device)
        pred = self.predict_matrix(X)
        return [float(p) if math.isfinite(r) else math.inf for p, r in zip(pred, roof)]

    @property
    def devices(self) -> list[str]:
        """Device families the model was trained on."""
        return list(self.payload.get("devices", []))

    @property
    def synthetic(self) -> bool:
        """Whether any training record was synthetic."""
        return bool(self.payload.get("synthetic", False))

    def matches_device(self, device: Mapping[str, object] | None) -> bool:
        """True when ``device`` belongs to a family the model saw in training."""
        return bool(device) and device_key(device) in self.devices

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The file form: format header, sha256 digest and payload (a copy: editing it leaves the model as is)."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "sha256": payload_digest(self.payload), "payload": copy.deepcopy(self.payload)}

    def save(self, path: str | Path) -> None:
        """Write the model as JSON to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), sort_keys=True, allow_nan=False), encoding="utf-8")

    @classmethod
    def from_dict(cls, doc: Any) -> "GBMCostModel":
        """Validate a parsed model file and build the model; see the module docstring."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ForeignModelError("not a tilewright cost model (missing format header)")
        if doc.get("format_version") != FORMAT_VERSION:
            raise ForeignModelError(f"unsupported model format_version {doc.get('format_version')!r}")
        payload = doc.get("payload")
        if not isinstance(payload, dict):
            raise ForeignModelError("model file has no payload object")
        try:
            digest = payload_digest(payload)
        except ValueError as exc:
            raise TamperedModelError(f"payload is not canonical JSON: {exc}") from None
        if doc.get("sha256") != digest:
            raise TamperedModelError("payload sha256 does not match: the file was modified or corrupted")
        if payload.get("model_type") != MODEL_TYPE:
            raise ForeignModelError(f"unknown model_type {payload.get('model_type')!r}")
        feature_set = payload.get("feature_set", "gpu")
        if feature_set not in FEATURE_SETS:
            raise IncompatibleModelError(f"unknown feature_set {feature_set!r}")
        if payload.get("feature_version") != FEATURE_VERSIONS[feature_set]:
            raise IncompatibleModelError(f"model uses feature version {payload.get('feature_version')!r}, "
                                         f"this tilewright computes version {FEATURE_VERSIONS[feature_set]!r}")
        if payload.get("record_schema_version") != SCHEMA_VERSION:
            raise IncompatibleModelError("model was trained on record schema "
                                         f"{payload.get('record_schema_version')!r}, expected {SCHEMA_VERSION}")
        if payload.get("feature_names") != list(FEATURE_SETS[feature_set]):
            raise IncompatibleModelError("model feature names differ from this tilewright's features")
        for key in ("init", "learning_rate"):
            value = payload.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ModelFileError(f"payload field {key!r} must be a finite number")
        if not isinstance(payload.get("trees"), list):
            raise ModelFileError("payload field 'trees' must be a list")
        return cls(payload)

    @classmethod
    def load(cls, path: str | Path) -> "GBMCostModel":
        """Read and validate a model file (JSON only; nothing in it is executed)."""
        path = Path(path)
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ModelFileError(f"{path}: {size} bytes is larger than the {MAX_FILE_BYTES} byte limit")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ForeignModelError(f"{path}: not a JSON cost-model file ({exc})") from None
        try:
            return cls.from_dict(doc)
        except ModelFileError as exc:
            raise type(exc)(f"{path}: {exc}") from None

    def __repr__(self) -> str:
        return (f"GBMCostModel(trees={len(self.payload['trees'])}, devices={self.devices}, "
                f"synthetic={self.synthetic})")
