"""The `capsrobust` command-line interface (Click), a thin layer over the capsrobust library."""
