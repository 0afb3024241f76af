"""What the tuner knows about the device it measures on.

A device-info dict is plain data (JSON-serialisable) and part of every tuning key: the GPU name,
its compute capability and the Triton version. On CPU, kernels run in Triton's interpreter and
the dict says so, so interpreter timings are never mistaken for GPU ones.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import triton

log = logging.getLogger(__name__)

#: Name used for the CPU interpreter "device".
CPU_INTERPRETER = "cpu-interpreter"
#: The label attached to every timing taken in the interpreter.
INTERPRETER_LABEL = "interpreter timings (Triton CPU interpreter, not GPU performance)"
#: The label attached to timings taken with CUDA events.
CUDA_LABEL = "gpu timings (CUDA events)"
#: How the label of every replayed timing starts (the file's source follows in brackets).
REPLAY_LABEL = "replayed timings"
#: The label attached to wall-clock timings of the native CPU target's kernels.
CPU_LABEL = "cpu timings (wall clock, native C++ kernels)"
#: How the capability field of a native CPU description starts (a digest of ISA flags and compiler follows).
CPU_CAPABILITY_PREFIX = "cpu:"

#: Timing sources: where a stored time came from (stored with every tuning entry).
SOURCE_CUDA = "cuda"  #: CUDA events on the GPU named by the entry
SOURCE_INTERPRETER = "interpreter"  #: wall clock of Triton's CPU interpreter
SOURCE_CPU = "cpu"  #: wall clock of native C++ kernels on the CPU named by the entry
SOURCE_REPLAY = "replay"  #: answered from a timing-record file; nothing was run
SOURCE_UNKNOWN = ""  #: entries written before sources were recorded
TIMING_SOURCES = (SOURCE_CUDA, SOURCE_INTERPRETER, SOURCE_CPU, SOURCE_REPLAY)


def trusted_source(device: dict[str, Any] | Any) -> str:
    """The one timing source compile time trusts for ``device`` (a device-info dict).

    A GPU's entries must have been timed with CUDA events (on that GPU: the device name and
    capability are part of the key); a native CPU's entries with the wall clock on that CPU (its
    model is the name, a digest of its ISA flags and the compiler the capability); the CPU
    interpreter's entries are interpreter timings. Replayed timings and entries of unknown
    source are never trusted.
    """
    if device.get("is_gpu"):
        return SOURCE_CUDA
    return SOURCE_CPU if str(device.get("capability", "")).startswith(CPU_CAPABILITY_PREFIX) else SOURCE_INTERPRETER


def native_cpu_info(description: dict[str, Any], compiler_version: str) -> dict[str, Any]:
    """The device-info dict of a CPU running native C++ kernels (tuning keys and reports).

    ``description`` is the OS's description of the CPU (model, isa, cores, cache sizes); the key
    fields are the model (``name``) and ``capability`` = ``cpu:`` + a digest of the ISA flags
    and the compiler version, so records never cross CPUs with other vector units or compilers.
    """
    import hashlib

    digest = hashlib.sha256(json.dumps([sorted(description.get("isa", [])), compiler_version,
                                        description.get("machine", "")]).encode()).hexdigest()[:16]
    return {**description, "name": str(description.get("model") or "cpu")[:128],
            "capability": CPU_CAPABILITY_PREFIX + digest, "sm_count": int(description.get("cores") or 1),
            "triton_version": "none", "is_gpu": False, "native": True, "compiler": compiler_version,
            "timing_label": CPU_LABEL, "timing_source": SOURCE_CPU}


def source_name(source: str | None) -> str:
    """Printable name of a timing source (``unknown`` for entries without one)."""
    return source or "unknown"


def _device_type(device: Any) -> tuple[str, int]:
    """Split ``device`` ("cuda:1", torch.device, None) into (type, index)."""
    if device is None:
        import torch

        return ("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else ("cpu", 0)
    text = str(device)
    dev_type, _, index = text.partition(":")
    return dev_type, int(index) if index else 0


def device_info(device: Any = None) -> dict[str, Any]:
    """Describe ``device`` for tuning keys and reports.

    Args:
        device: "cuda", "cuda:1", "cpu", a ``torch.device`` or None (CUDA when available).

    Returns:
        A plain dict with ``name``, ``capability`` (e.g. "9.0"; "none" on CPU), ``sm_count``,
        ``triton_version``, ``is_gpu``, ``timing_label`` and ``timing_source``; CUDA devices also give
        ``shared_memory_per_block`` and ``l2_cache_bytes`` when torch reports them.
    """
    dev_type, index = _device_type(device)
    if dev_type == "cuda":
        import torch

        props = torch.cuda.get_device_properties(index)
        return {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "sm_count": int(props.multi_processor_count),
            "triton_version": triton.__version__,
            "is_gpu": True,
            "timing_label": CUDA_LABEL,
            "timing_source": SOURCE_CUDA,
            "shared_memory_per_block": int(getattr(props, "shared_memory_per_block_optin", 0) or 0),
            "l2_cache_bytes": int(getattr(props, "L2_cache_size", 0) or 0),
            "index": index,
        }
    if dev_type != "cpu":
        log.warning("device %r is neither CUDA nor CPU; describing it as the CPU interpreter", device)
    return {
        "name": CPU_INTERPRETER,
        "capability": "none",
        "sm_count": os.cpu_count() or 1,
        "triton_version": triton.__version__,
        "is_gpu": False,
        "timing_label": INTERPRETER_LABEL,
        "timing_source": SOURCE_INTERPRETER,
    }


def torch_device(info: dict[str, Any]) -> str:
    """The torch device string that matches a device-info dict."""
    return f"cuda:{info.get('index', 0)}" if info.get("is_gpu") else "cpu"
