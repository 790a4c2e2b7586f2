"""Dataset generators the package itself needs (the demo's synthetic factory)."""
