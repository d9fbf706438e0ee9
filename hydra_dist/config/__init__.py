"""Typed config: schema, YAML composition, overrides, validation. No torch import."""
from .loader import ConfigError, dump_yaml, load_config, to_dict
from .schema import RunConfig, check_layout

__all__ = ["ConfigError", "RunConfig", "check_layout", "dump_yaml", "load_config", "to_dict"]
