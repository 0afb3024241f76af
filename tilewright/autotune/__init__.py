"""tilewright.autotune."""
