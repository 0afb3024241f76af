"""What the tuner knows about the device it measures on.

A device-info dict is plain data (JSON-serialisable) and part of every tuning key: the GPU name,
its compute capability and the Triton version. On CPU, kernels run in Triton's interpreter and
the dict says so, so interpreter timings are never mistaken for GPU ones.
"""
from __future__ import annotations

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

#: Timing sources: where a stored time came from (stored with every tuning entry).
SOURCE_CUDA = "cuda"  #: CUDA events on the GPU named by the entry
SOURCE_INTERPRETER = "interpreter"  #: wall clock of Triton's CPU interpreter
SOURCE_REPLAY = "replay"  #: answered from a timing-record file; nothing was run
SOURCE_UNKNOWN = ""  #: entries written before sources were recorded
TIMING_SOURCES = (SOURCE_CUDA, SOURCE_INTERPRETER, SOURCE_REPLAY)


def trusted_source(device: dict[str, Any] | Any) -> str:
    """The one timing source compile time trusts for ``device`` (a device-info dict).

    A GPU's entries must have been timed with CUDA events (on that GPU: the device name and
    capability are part of the key); the CPU interpreter's entries are interpreter timings.
    Replayed timings and entries of unknown source are never trusted.
    """
    return SOURCE_CUDA if device.get("is_gpu") else SOURCE_INTERPRETER


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
