"""tilewright.targets.triton.attention."""
