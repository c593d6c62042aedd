"""Typed configuration, presets and the legacy flag mapping."""

from engine.config.presets import ConfigError, PresetLibrary, ResolvedConfig, resolve
from engine.config.schema import Config, json_schema

__all__ = ["Config", "ConfigError", "PresetLibrary", "ResolvedConfig", "json_schema", "resolve"]
