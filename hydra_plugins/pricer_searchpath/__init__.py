"""Makes `sweep=NAME` select the repo's `sweeps/NAME.yaml` (searchpath.py says how)."""
