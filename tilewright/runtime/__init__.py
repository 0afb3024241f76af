"""tilewright.runtime."""
