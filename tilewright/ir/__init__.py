"""tilewright.ir."""
