"""tilewright.costmodel: features, measurement records, the roofline and learned cost models.

:func:`load_default_model` is what the compiler and the autotuner use: the trained model
shipped in ``tilewright/data/costmodel_default.json`` when there is one and it was trained on
the GPU family at hand, else the analytical :class:`~tilewright.costmodel.roofline.RooflineModel`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..schedule.problem import KernelProblem
from ..schedule.space import ConfigValue
from .base import CostModel
from .roofline import RooflineModel

log = logging.getLogger(__name__)

#: Where the shipped default model lives (absent until trained on real GPU records).
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "data" / "costmodel_default.json"
#: The trained model for the native CPU target (used only on the CPU it was trained on: same
#: model, ISA flags and compiler); absent unless it beat the roofline on held-out kernels.
CPU_DEFAULT_MODEL_PATH = DEFAULT_MODEL_PATH.with_name("costmodel_cpu_default.json")
#: Environment variable naming another model file to use as the default.
MODEL_ENV = "TILEWRIGHT_COSTMODEL"

__all__ = ["CostModel", "RooflineModel", "DeviceDispatchModel", "load_default_model",
           "DEFAULT_MODEL_PATH", "CPU_DEFAULT_MODEL_PATH"]


class DeviceDispatchModel(CostModel):
    """Uses a trained model for the GPU families it was trained on, the roofline elsewhere.

    The choice is made per ``predict`` call, so scores within one call are always comparable.
    """

    def __init__(self, trained: CostModel, fallback: CostModel | None = None) -> None:
        """Wrap ``trained`` (must have ``matches_device(device) -> bool``)."""
        self.trained = trained
        self.fallback = fallback or RooflineModel()

    def model_for(self, device: Mapping[str, object] | None) -> CostModel:
        """The model that scores configs for ``device``."""
        from .dataset import feature_set_of

        if getattr(self.trained, "feature_set", "gpu") != feature_set_of(device):
            return self.fallback
        matches = getattr(self.trained, "matches_device", None)
        return self.trained if matches is not None and matches(device) else self.fallback

    def predict(self, problem: KernelProblem, configs: Sequence[Mapping[str, ConfigValue]],
                device: Mapping[str, object] | None = None) -> list[float]:
        """Scores from the trained model when it fits ``device``, else from the fallback."""
        return self.model_for(device).predict(problem, configs, device)

    def __repr__(self) -> str:
        return f"DeviceDispatchModel({self.trained!r}, fallback={self.fallback!r})"


def load_default_model(device: Mapping[str, object] | None = None,
                       path: str | Path | None = None) -> CostModel:
    """The best cost model available for ``device``.

    Args:
        device: device-info dict; when given and the trained model was not trained on its
            GPU family, the roofline model is returned directly.
        path: model file to use instead of ``$TILEWRIGHT_COSTMODEL`` or the shipped default.

    Returns:
        A :class:`DeviceDispatchModel` around the trained model, or :class:`RooflineModel`
        when no usable trained model exists (missing, unreadable, tampered, incompatible,
        or trained on synthetic records).
    """
    from .cpu import is_cpu_device
    from .gbm import GBMCostModel, ModelFileError

    default = CPU_DEFAULT_MODEL_PATH if is_cpu_device(device) else DEFAULT_MODEL_PATH
    model_path = Path(path or os.environ.get(MODEL_ENV) or default)
    if not model_path.exists():
        if path or os.environ.get(MODEL_ENV):
            log.warning("cost model %s does not exist; using the roofline model", model_path)
        return RooflineModel()
    try:
        trained = GBMCostModel.load(model_path)
    except (ModelFileError, OSError) as exc:
        log.warning("cannot use cost model %s (%s); using the roofline model", model_path, exc)
        return RooflineModel()
    if trained.synthetic:
        log.warning("cost model %s was trained on synthetic records; using the roofline model", model_path)
        return RooflineModel()
    if is_cpu_device(device) != (trained.feature_set == "cpu"):
        log.info("cost model %s scores %s kernels; using the roofline model", model_path, trained.feature_set)
        return RooflineModel()
    if device is not None and not trained.matches_device(device):
        log.info("cost model %s was trained on %s, not %s; using the roofline model",
                 model_path, trained.devices, device.get("name"))
        return RooflineModel()
    return DeviceDispatchModel(trained)
