"""tilewright.schedule."""
