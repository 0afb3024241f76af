"""Attention tests run the Triton kernels in the interpreter on CPU."""
import os
import sys
from pathlib import Path

# NOTE: Triton's own jit'd builtins (tl.rand, ...) run in the interpreter only when
# TRITON_INTERPRET is set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TILEWRIGHT_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).parent))

from tilewright.config import config  # noqa: E402

config.interpret = True
