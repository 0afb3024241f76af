"""Compile-time race results kept on disk, so a second process does not time the same race again.

A race (:func:`tilewright.compiler._race`) times a kernel's few candidates — e.g. the generated GEMM
against the vendor library — when it has no tuned schedule. Its winner is stored as one small JSON
file under ``<cache_dir>/races/``, named by a digest of the problem key, the schedule-space version
and the device (model, capability: on a CPU the ISA flags and compiler). A file is trusted only when
it parses, names the same key and device, and its config is one of the current candidates; anything
else (corrupt, foreign, stale) is ignored, logged once, and the race runs again and rewrites it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..schedule.space import config_hash

log = logging.getLogger(__name__)

FORMAT = 1


def _identity(problem_key: str, space_version: str, device: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "problem": problem_key, "space_version": space_version,
            "device": [str(device.get("name", "")), str(device.get("capability", ""))]}


def _path(identity: Mapping[str, Any]) -> Path:
    from ..config import cache_subdir

    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return cache_subdir("races") / f"{digest}.json"


def load_winner(problem_key: str, space_version: str, device: Mapping[str, Any],
                candidates: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The stored winner of this race, or None (no file, or one that is corrupt, foreign or stale)."""
    identity = _identity(problem_key, space_version, device)
    path = _path(identity)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable race record %s (%s); timing the race again", path, exc)
        return None
    if not isinstance(doc, dict) or doc.get("identity") != identity or not isinstance(doc.get("config"), dict):
        log.warning("ignoring race record %s: it is not this race's (foreign or corrupt)", path)
        return None
    hashes = {config_hash(dict(c)) for c in candidates}
    if config_hash(doc["config"]) not in hashes:
        log.info("race record %s names a config that is no longer a candidate; timing again", path)
        return None
    return dict(doc["config"])


def store_winner(problem_key: str, space_version: str, device: Mapping[str, Any], config: Mapping[str, Any],
                 times_s: Mapping[str, float]) -> None:
    """Write the race's winner (atomically: concurrent processes never see half a file)."""
    identity = _identity(problem_key, space_version, device)
    path = _path(identity)
    doc = {"identity": identity, "config": dict(config), "times_s": dict(times_s)}
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, sort_keys=True, default=str)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs a race next time
        log.warning("cannot store race record %s (%s)", path, exc)
