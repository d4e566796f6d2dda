"""
fulabd's benchmark harness: each scenario measured beside its baselines in the same run.

Run `python -m bench` (or `python -m bench --quick`); see the README's Performance section.
"""
