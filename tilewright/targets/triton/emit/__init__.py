"""tilewright.targets.triton.emit."""
