"""Hyperparameter search with Ray Tune against the balance objective (docs/tuning.md)."""
