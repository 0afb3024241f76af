"""tilewright.passes.fx."""
