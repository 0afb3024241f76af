"""tilewright.targets.triton.conv."""
