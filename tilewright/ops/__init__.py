"""tilewright custom ops (``torch.ops.tilewright.*``); importing this package registers them."""
from . import attention  # noqa: F401  (registers tilewright::flash_attention and its backward)

__all__ = ["attention"]
