"""tilewright.costmodel."""
