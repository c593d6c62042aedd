"""Hyperparameter search with Optuna under a fair protocol: search spaces (:mod:`.space`), studies on disk
(:mod:`.study`) and the tuner that runs their fold runs through the same functions as the CLI (:mod:`.tuner`)."""
