"""The run screen's Retrieval tab: plain view functions, Pilot, snapshots (half-cell images) and the real program in
tmux."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folders, tables_settled

from dmltui.inspect import inspect_run
from dmltui.testing import fake_run
from dmltui.tui.retrieval_view import caption, class_rows, marks_text, next_order, pair_rows, query_rows, summary_text
from dmltui.tui.widgets.retrieval import RetrievalPanel
from engine.embed import Embeddings, cache_path, file_stat, write_cache

# textual-image reads pixels with a Pillow call that Pillow 14 drops; it is textual-image's to change
pytestmark = pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning")

CLOCK = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
SIZES = {"80x24": (80, 24), "120x40": (120, 40)}

# 5 classes x 4 images, small integers (exact distances, ties); classes 1 and 2 share a point, class 4 is far away
VECTORS = np.array([[3 * c + i % 2 + (2 if c == 1 and i >= 2 else 0), i // 2, 0] for c in range(5) for i in range(4)],
                   dtype=np.float32)
VECTORS[16:] += [20, 0, 0]


@pytest.fixture(autouse=True)
def halfcell_images(monkeypatch):
    """Half-cell blocks: pictures that do not depend on what the terminal supports."""
    monkeypatch.setenv("DMLTUI_IMAGES", "halfcell")


def inspected_run(home: Path, *, cached: bool = True) -> dict:
    """A stored run whose best checkpoint's test embeddings are cached (synthetic vectors, real PNG images)."""
    record = fake_run(home, name="glyphs-s0", index=0, dataset="glyphs", epochs=3)
    run_dir = Path(record["run_dir"])
    names = make_class_folders(home / "images", 5, 4, suffix=".png", size=(24, 24))
    paths = sorted(str(p) for p in (home / "images").rglob("*.png"))
    checkpoint = run_dir / "checkpoints" / "best_test_e_recall@1.pt"
    checkpoint.write_bytes(b"a checkpoint; the cache's fingerprint vouches for it")
    if cached:
        fingerprint = {**file_stat(checkpoint), "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
        embeddings = Embeddings(VECTORS, np.repeat(np.arange(5), 4), paths, names,
                                {"name": "best", "path": str(checkpoint), "epoch": 3, "fingerprint": fingerprint}, "test")
        write_cache(cache_path(run_dir, "test", "best"), embeddings)
    return record


def app_for_tests():
    from dmltui.tui.app import DmlTuiApp

    return DmlTuiApp(poll_seconds=0, clock=lambda: CLOCK)


async def wait_for(pilot, condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.05)


async def open_run(pilot, run_id: str) -> None:
    from dmltui.tui.screens.run import RunScreen

    app = pilot.app
    await wait_for(pilot, lambda: app.run_record(run_id) is not None)
    app.push_screen(RunScreen(run_id))
    await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.query("#retrieval-table"))


def run_app(scenario, size=(120, 40)):
    app = app_for_tests()

    async def main():
        async with app.run_test(size=size) as pilot:
            await scenario(pilot)

    asyncio.run(main())


def captions(screen) -> list[str]:
    return [str(cell.query_one(".retrieval-caption").render()) for cell in screen.query(".retrieval-cell")]


# --------------------------------------------------------------------------- plain view functions


def test_view_rows_marks_and_captions(isolated_env):
    record = inspected_run(isolated_env)
    found = inspect_run(record["run_dir"], k=10, device="cpu")
    assert found.embeddings.cached
    rows = query_rows(found, "ap")
    assert len(rows) == 20 and [r.key for r in rows] == [str(q) for q in found.results.worst()]
    worst = found.query(int(rows[0].key))
    assert rows[0].cells[4].plain == "".join("✓" if n["correct"] else "✗" for n in worst["neighbours"])
    assert [r.cells[1] for r in query_rows(found, "class")] == sorted(r.cells[1] for r in rows)
    by_rank = [int(r.cells[3].plain) for r in query_rows(found, "rank")]
    assert by_rank == sorted(by_rank, reverse=True)
    assert marks_text([True, False]).plain == "✓✗" and marks_text([True, False]).spans[1].style == "red"
    assert [next_order(o) for o in ("ap", "rank", "class")] == ["rank", "class", "ap"]
    first = worst["neighbours"][0]
    assert caption(first, worst, 10).plain == f"{'✓' if first['correct'] else '✗'} {first['distance']:.3f}\n{first['class']}"
    assert caption({**first, "class": "latin_capital_letter_a"}, worst, 10).plain.endswith("\nlatin_cap…")
    assert caption(None, worst, 10).plain == f"Q AP {worst['ap']:.2f}\n{worst['class']}"
    classes = class_rows(found)
    assert len(classes) == 5 and [c[0].plain for c in classes] == sorted(c[0].plain for c in classes)
    top = found.confused_pairs(1)[0]
    assert pair_rows(found)[0][0].plain == str(top["count"]) and pair_rows(found)[0][1] == " ↔ ".join(top["classes"])
    assert "R@1" in summary_text(found, "ap", "queries").plain and "worst by AP" in summary_text(found, "ap", "queries").plain


# --------------------------------------------------------------------------- Pilot


def test_the_tab_opens_on_cached_embeddings_and_shows_a_chosen_query(isolated_env):
    """With cached embeddings the tab fills from the cache (no embedding, no progress bar); how fast it opens is
    bench/tui.py's figure retrieval_tab_s."""
    record = inspected_run(isolated_env)
    found = inspect_run(record["run_dir"], k=10, device="cpu")

    async def scenario(pilot):
        await open_run(pilot, record["id"])
        screen = pilot.app.screen
        table = screen.query_one("#retrieval-table")
        await pilot.press("6")
        await wait_for(pilot, lambda: table.row_count == 20)  # bounded by wait_for's 10 s
        assert screen.query_one(RetrievalPanel).inspection.embeddings.cached
        assert not screen.query_one("#retrieval-progress").display
        assert screen.query_one("TabbedContent").active == "retrieval" and screen.focused is table
        assert "R@1" in str(screen.query_one("#retrieval-status").render())
        await pilot.press("down", "down")  # choose the third worst query
        chosen = found.query(int(found.results.worst()[2]))
        await wait_for(pilot, lambda: captions(screen)[0].startswith(f"Q AP {chosen['ap']:.2f}"))
        shown = captions(screen)[1:]
        assert [c.split("\n")[0] for c in shown] == [
            f"{'✓' if n['correct'] else '✗'} {n['distance']:.3f}" for n in chosen["neighbours"]]
        cells = list(screen.query(".retrieval-cell"))[1:]
        assert [c.has_class("-correct") for c in cells] == [n["correct"] for n in chosen["neighbours"]]
        assert all(c.query_one(".retrieval-image").image is not None for c in cells)
        await pilot.press("o")  # ordered by first-hit rank, the deepest first
        hits = [int(str(table.get_row_at(i)[3])) for i in range(table.row_count)]
        assert hits == sorted(hits, reverse=True) and "worst by first-hit rank" in str(
            screen.query_one("#retrieval-status").render())
        await pilot.press("v")  # classes and the most confused pairs
        assert screen.query_one("#retrieval-views").current == "retrieval-classes"
        assert screen.query_one("#retrieval-class-table").row_count == 5
        assert str(screen.query_one("#retrieval-pairs").get_row_at(0)[1]) == " ↔ ".join(found.confused_pairs(1)[0]["classes"])

    run_app(scenario)


def test_without_a_cache_a_worker_embeds_with_progress_and_the_screen_responds(quickstart_copy):
    from dmltui import runs as run_ops

    record = run_ops.record_from_run_dir(quickstart_copy)
    run_ops.open_store().insert(record)

    async def scenario(pilot):
        await open_run(pilot, record["id"])
        screen = pilot.app.screen
        await pilot.press("6")
        await wait_for(pilot, lambda: screen.query_one("#retrieval-progress").display, timeout=60)
        assert "embedding the test split with the best checkpoint" in str(screen.query_one("#retrieval-status").render())
        assert screen.query_one(RetrievalPanel).child.poll() is None  # a child process embeds
        # the screen answers while the child embeds (how fast, against idle, is bench/tui.py's retrieval_tab_s)
        await pilot.press("1")
        assert screen.query_one("TabbedContent").active == "metrics"
        await pilot.press("6")
        await wait_for(pilot, lambda: screen.query_one("#retrieval-table").row_count == 200, timeout=120)
        assert not screen.query_one("#retrieval-progress").display
        assert "R@1 " in str(screen.query_one("#retrieval-status").render())

    run_app(scenario)
    assert (quickstart_copy / "embeddings" / "test-best.npz").is_file()


def test_a_run_without_a_checkpoint_says_so_on_the_tab(isolated_env):
    record = fake_run(isolated_env, name="young", index=0, dataset="glyphs", epochs=3)

    async def scenario(pilot):
        await open_run(pilot, record["id"])
        screen = pilot.app.screen
        await pilot.press("6")
        status = screen.query_one("#retrieval-status")
        await wait_for(pilot, lambda: "cannot inspect" in str(status.render()))
        assert "has no best checkpoint" in str(status.render())

    run_app(scenario)


# --------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_retrieval_tab(snap_compare, isolated_env, size):
    record = inspected_run(isolated_env)

    async def run_before(pilot):
        await open_run(pilot, record["id"])
        await pilot.press("6")
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#retrieval-table").row_count == 20)
        await pilot.press("down")
        await tables_settled(pilot)

    assert snap_compare(app_for_tests(), terminal_size=SIZES[size], run_before=run_before)


def test_snapshot_retrieval_classes_80x24(snap_compare, isolated_env):
    record = inspected_run(isolated_env)

    async def run_before(pilot):
        await open_run(pilot, record["id"])
        await pilot.press("6")
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#retrieval-table").row_count == 20)
        await pilot.press("v")
        await tables_settled(pilot)

    assert snap_compare(app_for_tests(), terminal_size=(80, 24), run_before=run_before)


# --------------------------------------------------------------------------- the real program in tmux


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_retrieval_in_tmux_at_80x24(isolated_env):
    """Open the run, switch to Retrieval, choose a query and read its neighbours' marks on the screen."""
    record = inspected_run(isolated_env)
    found = inspect_run(record["run_dir"], k=10, device="cpu")
    chosen = found.query(int(found.results.worst()[1]))
    script = Path(sys.executable).with_name("dmltui")
    base = ["tmux", "-L", f"dmltui-retrieval-{os.getpid()}"]
    env = [f"{name}={os.environ[name]}" for name in ("DMLTUI_HOME", "DMLTUI_DATA", "OMP_NUM_THREADS")]

    def tmux(*args: str) -> str:
        return subprocess.run([*base, *args], check=True, capture_output=True, text=True).stdout

    def wait_for_screen(pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = tmux("capture-pane", "-p", "-t", "main")
            if re.search(pattern, screen):
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} did not appear; the screen shows:\n{tmux('capture-pane', '-p', '-t', 'main')}")

    # the image mode is left to the terminal here: textual-image asks tmux what it can draw
    tmux("new-session", "-d", "-s", "main", "-x", "80", "-y", "24", "env", "-u", "DMLTUI_IMAGES", *env,
         "TERM=xterm-256color", str(script))
    try:
        wait_for_screen(r"glyphs-s0", 30)
        tmux("send-keys", "-t", "main", "Enter")
        wait_for_screen(r"finished · epoch 3/3", 15)
        tmux("send-keys", "-t", "main", "6")
        first = found.query(int(found.results.worst()[0]))
        wait_for_screen(rf"Q AP {first['ap']:.2f}", 30)  # the worst query is shown first
        tmux("send-keys", "-t", "main", "Down")
        screen = wait_for_screen(rf"Q AP {chosen['ap']:.2f}", 15)
        marks = re.findall(r"([✓✗]) (\d\.\d{3})", screen)
        expected = [("✓" if n["correct"] else "✗", f"{n['distance']:.3f}") for n in chosen["neighbours"]]
        assert marks and marks == expected[: len(marks)], screen
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True)
