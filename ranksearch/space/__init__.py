"""Search spaces: the YAML format (``spec``), validation (``load``), and compilation for Optuna (``optuna_space``)."""

from ranksearch.space.load import load_space, looks_like_space, space_json_schema, validate_space
from ranksearch.space.space import SearchSpace

__all__ = ["SearchSpace", "load_space", "looks_like_space", "space_json_schema", "validate_space"]
