"""The sparsity plan: what approximate rewrite each layer gets, as plain, versioned JSON.

A plan is produced once by calibration (``tilewright sparsify`` or
:func:`tilewright.sparsity.sparsify`) and then reloaded for every compile, so calibration data is
needed only once. It is plain data (``json``), never pickle.

Format (``version`` 1)::

    {
      "version": 1,
      "budget": 0.01,                 # the error budget the plan was gated against
      "metric": "rel_l2",             # rel_l2 | kl | <name of a user callable>
      "model_error": 0.004,           # the whole model's error with every accepted entry applied
      "fingerprint": {"layers": {"blocks.0.fc1": {"kind": "linear", "shape": [256, 64]}, ...},
                      "attention_sites": 2, "digest": "<sha256 of the layers>"},
      "entries": [
        {"site": "blocks.0.fc1", "kind": "linear", "method": "block_sparse",
         "params": {"density": 0.25, "block": [16, 16]}, "error": 0.003,
         "expected_speedup": 3.1, "measured_speedup": 2.4, "note": ""},
        {"site": "attention:0", "kind": "attention", "method": "<attention method>", ...},
        ...
      ],
      "meta": {...}                   # free-form: tool version, calibration sizes, time
    }

``site`` is a module's qualified name (``model.named_modules()``) for ``linear``/``conv``
entries and ``"attention:<ordinal>"`` (the order attention sites are met in the traced graph)
for ``attention`` entries. ``method`` is one of :data:`WEIGHT_METHODS` for weights (``exact``
means the gate kept the layer exact), or an attention method name owned by
:mod:`tilewright.sparsity.attention`.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tilewright.errors import TilewrightError

PLAN_VERSION = 1

Kind = Literal["linear", "conv", "attention"]
KINDS: tuple[str, ...] = ("linear", "conv", "attention")
#: Methods for weight layers (``linear``/``conv``); ``exact`` = left as is by the gate.
WEIGHT_METHODS: tuple[str, ...] = ("exact", "block_sparse", "2:4", "low_rank")
#: Names of the built-in error metrics (a user callable is recorded under its own name).
METRICS: tuple[str, ...] = ("rel_l2", "kl")


class PlanError(TilewrightError):
    """A sparsity plan is malformed, of an unknown version, or does not fit the model it is applied to."""


class PlanMismatchError(PlanError):
    """A plan was made for a model whose layers (names, kinds or weight shapes) differ from this one."""


@dataclass
class PlanEntry:
    """One layer's (or attention site's) decision.

    ``params`` holds the method's parameters: ``density`` and ``block`` ([rows, cols]) for
    ``block_sparse``; ``n``/``m`` for ``2:4``; ``rank`` (and ``full_rank``) for ``low_rank``;
    whatever the attention method needs for attention sites. ``error`` is the metric measured on
    the calibration data with only this entry applied (``nan`` when not measured).
    """

    site: str
    kind: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    error: float = math.nan
    expected_speedup: float = 1.0
    measured_speedup: float | None = None
    note: str = ""

    @property
    def is_exact(self) -> bool:
        """True when the entry leaves its site exact (the gate rejected, or nothing applied)."""
        return self.method == "exact"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN errors become ``None``)."""
        d = asdict(self)
        d["error"] = None if self.error is None or math.isnan(self.error) else float(self.error)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanEntry:
        """Inverse of :meth:`to_dict`, validating the kind and required keys."""
        missing = [k for k in ("site", "kind", "method") if k not in d]
        if missing:
            raise PlanError(f"plan entry {d!r} lacks {missing}; every entry needs site, kind and method")
        if d["kind"] not in KINDS:
            raise PlanError(f"plan entry for {d['site']!r} has kind {d['kind']!r}; expected one of {KINDS}")
        if d["kind"] != "attention" and d["method"] not in WEIGHT_METHODS:
            raise PlanError(
                f"plan entry for {d['site']!r} has method {d['method']!r}; weight layers take one of {WEIGHT_METHODS}"
            )
        err = d.get("error")
        ms = d.get("measured_speedup")
        return cls(
            site=str(d["site"]),
            kind=str(d["kind"]),
            method=str(d["method"]),
            params=dict(d.get("params") or {}),
            error=math.nan if err is None else float(err),
            expected_speedup=float(d.get("expected_speedup", 1.0)),
            measured_speedup=None if ms is None else float(ms),
            note=str(d.get("note", "")),
        )


def attention_site(ordinal: int) -> str:
    """The ``site`` string of the ``ordinal``-th attention site of a traced graph."""
    return f"attention:{int(ordinal)}"


def _digest(layers: dict[str, dict[str, Any]], attention_sites: int | None) -> str:
    blob = json.dumps({"layers": layers, "attention_sites": attention_sites}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def model_fingerprint(model: Any, attention_sites: int | None = None) -> dict[str, Any]:
    """Names, kinds and weight shapes of a model's linear and conv layers, plus a digest.

    ``attention_sites`` (the number of attention sites, when known) is recorded too so that an
    attention plan cannot silently be applied to a model with a different number of layers.
    """
    from torch import nn

    layers: dict[str, dict[str, Any]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            layers[name] = {"kind": "linear", "shape": list(mod.weight.shape)}
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            layers[name] = {"kind": "conv", "shape": list(mod.weight.shape)}
    return {"layers": layers, "attention_sites": attention_sites, "digest": _digest(layers, attention_sites)}


@dataclass
class SparsityPlan:
    """A whole model's plan: entries plus the budget, metric and model fingerprint (see module doc)."""

    entries: list[PlanEntry] = field(default_factory=list)
    budget: float = 0.01
    metric: str = "rel_l2"
    fingerprint: dict[str, Any] = field(default_factory=dict)
    model_error: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    # -- queries -------------------------------------------------------------------------
    def entry(self, site: str) -> PlanEntry | None:
        """The entry for ``site`` or None."""
        for e in self.entries:
            if e.site == site:
                return e
        return None

    def of_kind(self, *kinds: str) -> list[PlanEntry]:
        """Entries of the given kinds (all entries when none given)."""
        return [e for e in self.entries if not kinds or e.kind in kinds]

    def applied(self, *kinds: str) -> list[PlanEntry]:
        """Entries that rewrite something (method != ``exact``), optionally of the given kinds."""
        return [e for e in self.of_kind(*kinds) if not e.is_exact]

    def set_entry(self, entry: PlanEntry) -> None:
        """Add ``entry``, replacing any entry of the same site."""
        self.entries = [e for e in self.entries if e.site != entry.site] + [entry]

    # -- (de)serialization ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-ready data."""
        return {
            "version": self.version,
            "budget": float(self.budget),
            "metric": self.metric,
            "model_error": None if self.model_error is None else float(self.model_error),
            "fingerprint": self.fingerprint,
            "entries": [e.to_dict() for e in self.entries],
            "meta": self.meta,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparsityPlan:
        """Load from :meth:`to_dict` output; raises :class:`PlanError` on an unknown version or bad data."""
        if not isinstance(d, dict):
            raise PlanError(f"a sparsity plan is a JSON object, got {type(d).__name__}")
        version = d.get("version")
        if version != PLAN_VERSION:
            raise PlanError(
                f"sparsity plan version {version!r} is not supported (this tilewright reads version "
                f"{PLAN_VERSION}); recalibrate with `tilewright sparsify`"
            )
        me = d.get("model_error")
        return cls(
            entries=[PlanEntry.from_dict(e) for e in d.get("entries", [])],
            budget=float(d.get("budget", 0.01)),
            metric=str(d.get("metric", "rel_l2")),
            fingerprint=dict(d.get("fingerprint") or {}),
            model_error=None if me is None else float(me),
            meta=dict(d.get("meta") or {}),
            version=PLAN_VERSION,
        )

    @classmethod
    def from_json(cls, text: str) -> SparsityPlan:
        """Parse JSON text written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"sparsity plan is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON to ``path`` (parents created) and return the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_json() + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> SparsityPlan:
        """Read a plan saved by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise PlanError(f"sparsity plan file {str(p)!r} does not exist; create it with `tilewright sparsify`")
        return cls.from_json(p.read_text())

    # -- model check ---------------------------------------------------------------------
    def check_model(self, model: Any, attention_sites: int | None = None) -> None:
        """Raise :class:`PlanMismatchError` unless ``model`` has the layers this plan was made for.

        Only the layers the plan's entries name must match (name, kind, weight shape); the full
        digest is compared when both sides know it, and the number of attention sites when both
        sides know it.
        """
        check_fingerprint(self.fingerprint, model_fingerprint(model, attention_sites), self.entries)


def check_fingerprint(
    planned: dict[str, Any], actual: dict[str, Any], entries: Iterable[PlanEntry] = ()
) -> None:
    """Compare a plan's fingerprint with a model's; raise :class:`PlanMismatchError` listing differences."""
    if not planned:
        return
    want = planned.get("layers", {})
    have = actual.get("layers", {})
    problems: list[str] = []
    for name in sorted(set(want) | set(have)):
        w, h = want.get(name), have.get(name)
        if w is None:
            problems.append(f"{name}: not in the plan's model")
        elif h is None:
            problems.append(f"{name}: missing from this model (plan has {w['kind']} {w['shape']})")
        elif w.get("kind") != h.get("kind") or list(w.get("shape", [])) != list(h.get("shape", [])):
            problems.append(f"{name}: plan has {w.get('kind')} {w.get('shape')}, model has {h.get('kind')} {h.get('shape')}")
    pa, ha = planned.get("attention_sites"), actual.get("attention_sites")
    if pa is not None and ha is not None and pa != ha:
        problems.append(f"attention sites: plan has {pa}, model has {ha}")
    for e in entries:
        if e.kind != "attention" and e.site not in have:
            problems.append(f"{e.site}: the plan rewrites it but the model has no such {e.kind} layer")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
        raise PlanMismatchError(
            f"this sparsity plan was made for a different model ({len(problems)} layer difference(s): {shown}); "
            "recalibrate with `tilewright sparsify` for this model"
        )
