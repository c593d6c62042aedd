"""What the benchmarks that drive the ``dmltui`` command line share: a scratch dmltui home and its environment."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

DMLTUI = str(Path(sys.executable).with_name("dmltui"))  # the command line of this environment


@contextlib.contextmanager
def scratch_home(presets: dict[str, str], config: str = "") -> Iterator[tuple[Path, dict[str, str]]]:
    """A temporary dmltui home holding the user presets *presets* (name -> TOML) and the user config *config*, and
    the environment that points ``dmltui`` at them, so that a benchmark never reads or writes the user's own. The
    environment keeps a bytecode cache in the home and drops PYTHONDONTWRITEBYTECODE, so that a warm-up command
    warms the timed ones even where the environment forbids writing bytecode."""
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        (home / "presets").mkdir()
        for name, text in presets.items():
            (home / "presets" / f"{name}.toml").write_text(text)
        (home / "config.toml").write_text(config)
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        env.update(DMLTUI_HOME=scratch, DMLTUI_CONFIG=str(home / "config.toml"), PYTHONPYCACHEPREFIX=str(home / "pycache"))
        yield home, env


def dmltui(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``dmltui *args*``, its output captured; SystemExit with the command and what it said when it fails, which a
    CalledProcessError would leave out."""
    done = subprocess.run([DMLTUI, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise SystemExit(f"dmltui {' '.join(args)}: exit {done.returncode}: {said[-1] if said else 'no message'}")
    return done
