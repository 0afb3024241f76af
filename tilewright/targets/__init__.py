"""tilewright.targets."""
