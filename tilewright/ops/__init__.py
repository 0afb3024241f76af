"""tilewright custom ops (``torch.ops.tilewright.*``); importing this package registers them."""
from . import attention
from . import random

__all__ = ["attention", "random"]
