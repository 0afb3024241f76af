"""tilewright.targets.triton."""
