"""Where the run manager keeps its files: ``$DMLTUI_HOME`` (default: the user's data directory).

::

    $DMLTUI_HOME/
      runs.json        the run store (TinyDB; summaries only)
      runs.json.lock   its file lock
      runs/<run id>/   run directories of runs launched by the manager
      presets/         the user's own presets (shadow the bundled ones)
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def home() -> Path:
    configured = os.environ.get("DMLTUI_HOME")
    return Path(configured).expanduser() if configured else Path(platformdirs.user_data_dir("dmltui"))


def store_path() -> Path:
    return home() / "runs.json"


def runs_dir() -> Path:
    return home() / "runs"


def user_presets_dir() -> Path:
    return home() / "presets"


def preset_library():
    from engine.config.presets import PresetLibrary, default_search_path

    return PresetLibrary(default_search_path([user_presets_dir()]))
