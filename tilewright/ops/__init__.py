"""tilewright custom ops (``torch.ops.tilewright.*``); importing this package registers them."""
from . import attention  # noqa: F401  (registers tilewright::flash_attention and its backward)
from . import random  # noqa: F401  (registers tilewright::seed and tilewright::dropout_mask)

__all__ = ["attention", "random"]
