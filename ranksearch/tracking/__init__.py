"""Experiment tracking: MLflow logging and the pyarrow tables ranksearch writes."""
