"""tilewright.passes."""
