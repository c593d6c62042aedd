"""Where the run manager keeps its files: ``$DMLTUI_HOME`` (default: the user's data directory).

::

    $DMLTUI_HOME/
      runs.json        the run store (TinyDB; summaries only)
      runs.json.lock   its file lock
      runs/<run id>/   run directories of runs launched by the manager
      presets/         the user's own presets (shadow the bundled ones)

The user's settings file is apart from it, in the user config dir (``$DMLTUI_CONFIG`` overrides it):
``~/.config/dmltui/config.toml`` on Linux; ``[data.mirrors]`` and ``[data.expected]`` are read by
``engine.data.sources.overrides_from_config``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import platformdirs


class SettingError(ValueError):
    """An environment setting of dmltui's with a value it cannot use."""


def home() -> Path:
    configured = os.environ.get("DMLTUI_HOME")
    return Path(configured).expanduser() if configured else Path(platformdirs.user_data_dir("dmltui"))


def config_path() -> Path:
    configured = os.environ.get("DMLTUI_CONFIG")
    return Path(configured).expanduser() if configured else Path(platformdirs.user_config_dir("dmltui")) / "config.toml"


def user_config() -> dict:
    """The parsed user config file, {} when there is none; SettingError for one that cannot be read as TOML."""
    path = config_path()
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as error:
        raise SettingError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:
        raise SettingError(f"{path}: cannot read it: {error.strerror}") from None


def store_path() -> Path:
    return home() / "runs.json"


def store_timeout() -> float:
    """Seconds a command waits for the store's lock before it gives up with exit code 4 (``$DMLTUI_STORE_TIMEOUT``)."""
    configured = os.environ.get("DMLTUI_STORE_TIMEOUT", "").strip()
    try:
        return float(configured) if configured else 10.0
    except ValueError:
        raise SettingError(f"DMLTUI_STORE_TIMEOUT={configured!r}: expected seconds, e.g. 10") from None


def runs_dir() -> Path:
    return home() / "runs"


def user_presets_dir() -> Path:
    return home() / "presets"


def preset_library():
    from engine.config.presets import PresetLibrary, default_search_path

    return PresetLibrary(default_search_path([user_presets_dir()]))
