"""Distributed sweeps: Ray Tune + Optuna over a search space, tracked in MLflow from the driver.

Import ``ranksearch.sweep.tuner.run_sweep`` for the library entry point; CLI commands live in
``ranksearch.sweep.commands`` (no heavy imports at module level).
"""
