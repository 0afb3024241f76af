"""tilewright.frontend."""
