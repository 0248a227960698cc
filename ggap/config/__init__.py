"""Configuration: embedded defaults -> TOML file -> GINNUNGAGAP_* env -> CLI flags."""

from ggap.config.load import ConfigError, config_to_dict, load_config
from ggap.config.model import Config

__all__ = ["Config", "ConfigError", "config_to_dict", "load_config"]
