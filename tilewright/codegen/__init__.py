"""tilewright.codegen."""
