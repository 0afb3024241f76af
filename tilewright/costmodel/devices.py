"""GPU specifications the cost model reasons with: SMs, shared memory, registers, bandwidth, peaks.

A device is described to the cost model by a plain dict (``{"name": "NVIDIA H100 80GB HBM3",
"capability": "9.0", "sm_count": 132}``); :func:`device_spec` maps it onto a row of
:data:`DEVICE_SPECS` by name, lets fields in the dict override the table, and falls back to a
generic mid-range GPU for unknown names so that features and the roofline never fail.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSpec:
    """Published limits of one GPU model (dense peaks, no sparsity).

    Attributes:
        family: canonical short name ("H100-SXM", "A100-80GB", "generic", ...).
        capability: compute capability "major.minor".
        sm_count: streaming multiprocessors.
        smem_per_sm: shared memory per SM in bytes.
        smem_per_block: largest shared memory one program may use, bytes.
        regs_per_sm: 32-bit registers per SM.
        max_warps_per_sm: resident warps per SM.
        max_blocks_per_sm: resident programs (thread blocks) per SM.
        dram_bw: DRAM bandwidth in bytes/s.
        l2_bw: L2 bandwidth in bytes/s (approximate).
        l2_bytes: L2 cache size in bytes.
        fp16_tc_flops: dense fp16/bf16 tensor-core FLOP/s.
        tf32_tc_flops: dense tf32 tensor-core FLOP/s (fp32 ``tl.dot`` with ``input_precision="tf32"``).
        fp32_flops: non-tensor fp32 FLOP/s.
    """

    family: str
    capability: str
    sm_count: int
    smem_per_sm: int
    smem_per_block: int
    regs_per_sm: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    dram_bw: float
    l2_bw: float
    l2_bytes: int
    fp16_tc_flops: float
    tf32_tc_flops: float
    fp32_flops: float

    def peak_flops(self, dtype: str, tensor_cores: bool, precision: str = "tf32") -> float:
        """Peak FLOP/s for ``dtype`` with or without tensor cores.

        ``precision`` is the float32 ``tl.dot`` input precision: ``"ieee"`` runs on the FMA
        units (the fp32 peak even when ``tensor_cores`` is asked for), ``"tf32"`` at the TF32
        tensor-core peak, ``"tf32x3"`` at a third of it (three TF32 products per step).
        """
        if dtype == "float32" and precision == "ieee":
            return self.fp32_flops
        if dtype == "float32" and tensor_cores and precision == "tf32x3":
            return self.tf32_tc_flops / 3.0
        if not tensor_cores:
            return self.fp32_flops * (2.0 if dtype in ("float16", "bfloat16") else 1.0)
        if dtype in ("float16", "bfloat16"):
            return self.fp16_tc_flops
        if dtype.startswith("float8") or dtype == "int8":
            return self.fp16_tc_flops * 2.0
        if dtype == "float32":
            return self.tf32_tc_flops
        return self.fp32_flops  # float64 and anything exotic


_KB = 1024
_MB = 1024 * 1024

#: Device table; order matters for name matching (more specific patterns first).
DEVICE_SPECS: dict[str, DeviceSpec] = {
    "H200": DeviceSpec("H200", "9.0", 132, 228 * _KB, 227 * _KB, 65536, 64, 32,
                       4.8e12, 12e12, 50 * _MB, 989e12, 494e12, 67e12),
    "H100-PCIe": DeviceSpec("H100-PCIe", "9.0", 114, 228 * _KB, 227 * _KB, 65536, 64, 32,
                            2.0e12, 9e12, 50 * _MB, 756e12, 378e12, 51e12),
    "H100-SXM": DeviceSpec("H100-SXM", "9.0", 132, 228 * _KB, 227 * _KB, 65536, 64, 32,
                           3.35e12, 12e12, 50 * _MB, 989e12, 494e12, 67e12),
    "A100-40GB": DeviceSpec("A100-40GB", "8.0", 108, 164 * _KB, 163 * _KB, 65536, 64, 32,
                            1.555e12, 5e12, 40 * _MB, 312e12, 156e12, 19.5e12),
    "A100-80GB": DeviceSpec("A100-80GB", "8.0", 108, 164 * _KB, 163 * _KB, 65536, 64, 32,
                            2.039e12, 5e12, 40 * _MB, 312e12, 156e12, 19.5e12),
    "L40S": DeviceSpec("L40S", "8.9", 142, 100 * _KB, 99 * _KB, 65536, 48, 24,
                       0.864e12, 4e12, 96 * _MB, 362e12, 183e12, 91.6e12),
    "L4": DeviceSpec("L4", "8.9", 58, 100 * _KB, 99 * _KB, 65536, 48, 24,
                     0.3e12, 1.5e12, 48 * _MB, 121e12, 60e12, 30e12),
    "A10G": DeviceSpec("A10G", "8.6", 80, 100 * _KB, 99 * _KB, 65536, 48, 16,
                       0.6e12, 2e12, 6 * _MB, 70e12, 35e12, 31.2e12),
    "RTX4090": DeviceSpec("RTX4090", "8.9", 128, 100 * _KB, 99 * _KB, 65536, 48, 24,
                          1.008e12, 5e12, 72 * _MB, 165e12, 82.6e12, 82.6e12),
    "V100": DeviceSpec("V100", "7.0", 80, 96 * _KB, 96 * _KB, 65536, 64, 32,
                       0.9e12, 3e12, 6 * _MB, 125e12, 15.7e12, 15.7e12),
    "T4": DeviceSpec("T4", "7.5", 40, 64 * _KB, 64 * _KB, 65536, 32, 16,
                     0.32e12, 1e12, 4 * _MB, 65e12, 8.1e12, 8.1e12),
}

#: Used when a device name matches nothing in the table (or no device is given).
GENERIC = DeviceSpec("generic", "8.0", 100, 164 * _KB, 163 * _KB, 65536, 64, 32,
                     1.5e12, 5e12, 32 * _MB, 300e12, 150e12, 30e12)

# (substring of the upper-cased device name, table key); first match wins.
_NAME_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("H200",), "H200"),
    (("H100", "PCIE"), "H100-PCIe"),
    (("H100",), "H100-SXM"),
    (("A100", "40GB"), "A100-40GB"),
    (("A100",), "A100-80GB"),
    (("L40S",), "L40S"),
    (("L4",), "L4"),
    (("A10G",), "A10G"),
    (("4090",), "RTX4090"),
    (("V100",), "V100"),
    (("T4",), "T4"),
)


def device_family(name: str | None) -> str:
    """Canonical family of a device name ("NVIDIA H100 80GB HBM3" -> "H100-SXM"), else "generic"."""
    upper = (name or "").upper()
    for needles, key in _NAME_PATTERNS:
        if all(n in upper for n in needles):
            return key
    return "generic"


def _capability_str(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        return f"{int(value[0])}.{int(value[1])}"
    return str(value)


def device_spec(device: Mapping[str, object] | None) -> DeviceSpec:
    """The :class:`DeviceSpec` for a device-info dict; fields in the dict override the table.

    Recognised keys (those of :func:`tilewright.schedule.device.device_info`): ``name``,
    ``capability`` (``"9.0"`` or ``(9, 0)``), ``sm_count`` (or ``multi_processor_count``),
    ``shared_memory_per_block``, ``l2_cache_bytes``, ``dram_bw``; ``is_gpu: False`` (the CPU
    interpreter) gives :data:`GENERIC`. Unknown names give :data:`GENERIC`.
    """
    if not device or device.get("is_gpu") is False:
        return GENERIC  # NOTE: the CPU interpreter's "sm_count" is a core count; ignore it.
    spec = DEVICE_SPECS.get(device_family(str(device.get("name", ""))), GENERIC)
    overrides: dict[str, object] = {}
    sm = device.get("sm_count", device.get("multi_processor_count"))
    if isinstance(sm, (int, float)) and sm > 0:
        overrides["sm_count"] = int(sm)
    cap = _capability_str(device.get("capability"))
    if cap:
        overrides["capability"] = cap
    aliases = {"smem_per_sm": "smem_per_sm", "smem_per_block": "smem_per_block",
               "shared_memory_per_block": "smem_per_block", "dram_bw": "dram_bw",
               "l2_bytes": "l2_bytes", "l2_cache_bytes": "l2_bytes"}
    for key, attr in aliases.items():
        value = device.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            overrides[attr] = type(getattr(spec, attr))(value)
    return replace(spec, **overrides) if overrides else spec
