"""Configuration: embedded defaults -> TOML file -> GINNUNGAGAP_* env -> CLI flags."""

from ggap.config.model import Config

__all__ = ["Config"]
