"""The commands' work: train, evaluate (and, from other modules, explain, compare, predict).

engine/runs.py owns the run folder (README.md, "Run folders") and the safe loading of one;
engine/metrics.py owns the metrics every command reports.
"""
