"""Hyperparameter search with Ray Tune against the balance objective (Python name:
dcgan_tune; docs/tuning.md). Uses the Ray layer of dcgan_cluster, never the reverse."""
