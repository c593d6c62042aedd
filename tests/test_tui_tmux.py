"""The real `dmltui` program in tmux, driven as a person would in their first five minutes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, socket: str, session: str = "dmltui"):
        self.base = ["tmux", "-L", socket]
        self.session = session

    def __call__(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], check=True, capture_output=True, text=True).stdout

    def keys(self, *keys: str, pause: float = 0.25) -> None:
        for key in keys:
            self("send-keys", "-t", self.session, key)
            time.sleep(pause)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", self.session)

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} did not appear within {timeout} s; the screen shows:\n{self.screen()}")


def test_the_first_five_minutes_in_tmux(isolated_env):
    """A new user at 80x24: an empty home with guidance, a two-seed run from the form, its metrics, a comparison."""
    script = Path(sys.executable).with_name("dmltui")
    tmux = Tmux(f"dmltui-test-{os.getpid()}")
    env = [f"{name}={os.environ[name]}" for name in ("DMLTUI_HOME", "DMLTUI_DATA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")]
    tmux("new-session", "-d", "-s", tmux.session, "-x", "80", "-y", "24", "env", *env, "TERM=xterm-256color", str(script))
    try:
        tmux("set-option", "-s", "escape-time", "0")  # else tmux holds a lone Escape back as the start of alt+key
        screen = tmux.wait_for(r"No runs yet", 30)
        assert re.search(r"n\s+start a run from a preset", screen) and "uv run dmltui quickstart" in screen
        tmux.keys("n")  # the new-run screen opens on the quickstart preset
        tmux.wait_for(r"1 run · ✓ valid · 0 overrides", 30)
        tmux.keys("Tab", "Tab", *["Right"] * 5)  # to the section tabs, then over to "optim"
        tmux.wait_for(r"epochs\s+20", 10)
        tmux.keys(*["Tab"] * 6, "End", "BSpace", "BSpace", "2")  # optim.epochs = 2
        tmux.wait_for(r"\* epochs\s+2\b", 10)
        tmux.wait_for(r"1 run · ✓ valid · 1 override", 10)
        tmux.keys("C-o", *["BTab"] * 7, "0", "-", "1")  # back from the preset list to the seeds: two runs
        tmux.wait_for(r"2 runs · ✓ valid · 1 override", 10)
        tmux.keys("C-s")
        tmux.wait_for(r"Start 2 runs|start 2 runs", 10)
        tmux.keys("y")
        tmux.wait_for(r"quickstart-s1", 20)  # back on the runs screen with the new runs
        tmux.wait_for(r"running", 60)  # live
        screen = tmux.wait_for(r"2 of 2 runs · 0 live", 240)
        assert len(re.findall(r"finished\s+quickstart-s[01]\s+2/2", screen)) == 2, screen
        tmux.keys("Enter")  # the run screen: one metric row per epoch
        tmux.wait_for(r"finished · epoch 2/2", 10)
        screen = tmux.wait_for(r"\n\s+2\s+\d\.\d{4}\s", 10)  # the metric rows are read in a worker, just after
        rows = [line.split() for line in screen.splitlines() if re.match(r"\s+[0-2]\s+(-|\d\.\d{4})\s", line)]
        assert [row[0] for row in rows] == ["0", "1", "2"], screen
        tmux.keys("Escape", pause=0.5)
        tmux.wait_for(r"2 of 2 runs", 10)
        tmux.keys("space", "Down", "space")
        tmux.wait_for(r"2 selected", 10)
        tmux.keys("c")
        screen = tmux.wait_for(r"comparing 2 runs", 10)  # the compare screen's title
        # quickstart logs no validation split: the best values are test-max, and the header says it is optimistic
        assert re.search(r"2 runs · test · best: test-max, optimistic", screen), screen
        assert "quickstart-s0" in screen and "quickstart-s1" in screen, screen
        # the last values come from metrics.jsonl, read in a worker just after the screen opens
        tmux.wait_for(r"last R@1 \(epoch\)\s+\d+\.\d\d \(2\)\s+\d+\.\d\d \(2\)", 10)
        tmux.keys("q")  # quitting ends the program, and with it the tmux session
        deadline = time.monotonic() + 10
        while subprocess.run([*tmux.base, "has-session", "-t", tmux.session], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, tmux.screen()
            time.sleep(0.2)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)


def test_the_runs_workspace_in_tmux(isolated_env):
    """At 80x24, as typed: a config key found in the column picker, the runs grouped by it with their mean ± std, a
    group opened onto its runs."""
    from dmltui.listing import best_value
    from dmltui.testing import fake_run

    runs = [fake_run(isolated_env, name=f"{loss}-lr{lr:g}-s{index // 4}", loss=loss, seed=index // 4, index=index,
                     ceiling=0.5 + 0.05 * (loss == "margin") + 0.01 * index, epochs=4, overrides={"optim": {"lr": lr}})
            for index, (loss, lr) in enumerate([(loss, lr) for loss in ("margin", "triplet") for lr in (1e-5, 1e-4)] * 2)]
    script = Path(sys.executable).with_name("dmltui")
    tmux = Tmux(f"dmltui-test-{os.getpid()}")
    env = [f"{name}={os.environ[name]}" for name in ("DMLTUI_HOME", "DMLTUI_DATA")]
    tmux("new-session", "-d", "-s", tmux.session, "-x", "80", "-y", "24", "env", *env, "TERM=xterm-256color", str(script))
    try:
        tmux("set-option", "-s", "escape-time", "0")
        tmux.wait_for(r"8 of 8 runs", 30)
        tmux.keys("f")
        tmux.wait_for(r"Columns: type to find one", 10)
        tmux("send-keys", "-t", tmux.session, "-l", "lr")  # typed at once, as a paste
        tmux.wait_for(r"config\.optim\.lr", 10)
        tmux.keys("Enter", "Escape")
        screen = tmux.wait_for(r"optim\.lr", 10)
        assert re.search(r"margin-lr1e-05-s1 .* 1e-05 ", screen), screen
        tmux.keys("g")
        tmux.wait_for(r"Group runs by", 10)
        tmux.keys(*["Down"] * 4, "Enter")  # (no groups), preset, name, dataset, loss
        screen = tmux.wait_for(r"2 groups by loss", 10)
        mean = sum(best_value(run) for run in runs if run["loss"] == "margin") / 4
        assert re.search(rf"▸\s+4 runs\s+margin\s+.*{mean:.4f}±", screen), screen
        tmux.keys("Enter")
        screen = tmux.wait_for(r"▾\s+4 runs\s+margin", 10)
        assert len(re.findall(r"finished\s+margin-lr", screen)) == 4, screen
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)
