"""Trial configuration: the pydantic schema and YAML loading with collected errors."""

from ranksearch.config.load import (
    apply_overrides,
    dump_trial_config,
    load_trial_config,
    load_yaml,
    validate_trial_config,
)

__all__ = ["apply_overrides", "dump_trial_config", "load_trial_config", "load_yaml", "validate_trial_config"]
