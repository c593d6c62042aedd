"""What the run screen shows, as plain functions and one incremental file reader (no Textual here).

``RunFiles`` reads a run directory the cheap way: ``FileTail`` for metrics.jsonl, train.log and
output.log (only appended bytes are read; a replaced file starts over), one ``scandir`` of
checkpoints/. Its ``poll()`` returns a ``RunUpdate`` with only what changed, which the screen
applies to its widgets. The row, column, curve and config helpers are shared with the
compare screen.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.text import Text

from dmltui.compare import PAPER_METRICS, flatten_config
from dmltui.listing import duration_seconds
from dmltui.monitor import epoch_rows, log_tail, metrics_tail
from dmltui.runs import load_config
from dmltui.tui.format import duration_text, job_text, metric_text, progress_text, state_text
from engine.metric_names import display_name

EVAL_SPLITS = ("val", "test", "train")  # column order of the evaluated splits
# what a "train" record logs; an evaluation on the train split logs metric names under the same "train/" prefix
TRAIN_RECORD_METRICS = ("loss", "lr", "epoch_time_s", "batches", "beta_mean")
LOSS_KEY = "train/loss"
LOG_LINES = 2000  # the most lines a log view keeps
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


# --------------------------------------------------------------------------- metric rows and columns


def metric_order(name: str) -> tuple[int, str]:
    """The paper's metrics first, in the paper's order, then the others by name."""
    return (PAPER_METRICS.index(name) if name in PAPER_METRICS else len(PAPER_METRICS), name)


def split_of(key: str) -> tuple[str, str]:
    split, _, name = key.partition("/")
    return split, name


def is_eval_key(key: str) -> bool:
    split, name = split_of(key)
    return bool(name) and not (split == "train" and name in TRAIN_RECORD_METRICS)


def table_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Row keys to show: the train loss, then every evaluated metric grouped by split (val, test, train)."""
    keys = set()
    for row in rows:
        keys.update(row)
    keys.discard("epoch")
    evals = [k for k in keys if is_eval_key(k)]
    split_rank = lambda split: EVAL_SPLITS.index(split) if split in EVAL_SPLITS else len(EVAL_SPLITS)  # noqa: E731
    evals.sort(key=lambda k: (split_rank(split_of(k)[0]), split_of(k)[0], metric_order(split_of(k)[1])))
    return ([LOSS_KEY] if LOSS_KEY in keys else []) + evals


def column_label(key: str) -> str:
    """``train/loss`` -> ``loss``, ``test/e_recall@1`` -> ``test R@1``."""
    if key == LOSS_KEY:
        return "loss"
    split, name = split_of(key)
    return f"{split} {display_name(name)}"


def row_cells(row: dict[str, Any], columns: Sequence[str]) -> list[Text]:
    """The epoch, then one right-aligned cell per column (``-`` where the epoch has no value)."""
    cells = [Text(str(row["epoch"]), justify="right")]
    for key in columns:
        value = row.get(key)
        cells.append(Text(metric_text(value) if isinstance(value, (int, float)) else "-", justify="right"))
    return cells


def fold_records(rows: dict[int, dict[str, Any]], records: Iterable[dict[str, Any]]) -> list[int]:
    """Merge metrics.jsonl records into *rows* (epoch -> row, as ``epoch_rows``); the epochs that changed, sorted."""
    changed = []
    for partial in epoch_rows(list(records)):
        row = rows.setdefault(partial["epoch"], {"epoch": partial["epoch"]})
        if any(row.get(k) != v for k, v in partial.items()):
            row.update(partial)
            changed.append(partial["epoch"])
    return sorted(changed)


# --------------------------------------------------------------------------- curves


def series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of one row key, skipping the epochs without a value."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)):
            xs.append(row["epoch"])
            ys.append(float(value))
    return xs, ys


def epoch_ticks(epochs: Iterable[int], most: int = 6) -> list[int]:
    """Whole-epoch x ticks (1, 2 or 5 times a power of ten apart), at most *most* of them."""
    epochs = list(epochs)
    if not epochs:
        return []
    low, high = min(epochs), max(epochs)
    step = 1
    while (high - low) // step + 1 > most:
        step = _next_step(step)
    first = -(-low // step) * step
    return list(range(first, high + 1, step))


def _next_step(step: int) -> int:
    """1, 2, 5, 10, 20, 50, ..."""
    digits = str(step)
    lead, zeros = int(digits[0]), len(digits) - 1
    return {1: 2, 2: 5, 5: 10}[lead] * 10 ** zeros


def curve_metrics(columns: Iterable[str]) -> list[str]:
    """Evaluated metric names (without split) that have a curve, the paper's first."""
    return sorted({split_of(k)[1] for k in columns if is_eval_key(k)}, key=metric_order)


def split_curves(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, tuple[list[int], list[float]]]:
    """One curve of *metric* per split that logged it: ``{"test": (epochs, values)}``."""
    curves = {}
    for split in [*EVAL_SPLITS, *sorted({split_of(k)[0] for r in rows for k in r if k != "epoch"} - set(EVAL_SPLITS))]:
        xs, ys = series(rows, f"{split}/{metric}")
        if xs:
            curves[split] = (xs, ys)
    return curves


def last_metrics(rows: Sequence[dict[str, Any]], metrics: Iterable[str], split: str = "test") -> dict[str, dict | None]:
    """The value of each metric at the last epoch that logged it: ``{metric: {"value", "epoch"} | None}``."""
    last: dict[str, dict | None] = {}
    for metric in metrics:
        key = f"{split}/{metric}"
        found = None
        for row in reversed(rows):
            value = row.get(key)
            if isinstance(value, (int, float)):
                found = {"value": value, "epoch": row["epoch"]}
                break
        last[metric] = found
    return last


# --------------------------------------------------------------------------- header, config, checkpoints


def best_entry_of(record: dict[str, Any], metric: str = "e_recall@1") -> tuple[str, dict] | None:
    """(split, {"value", "epoch"}) of the run's best *metric* on val (when it has one) or test."""
    for split in ("val", "test"):
        entry = (record.get("best") or {}).get(f"{split}/{metric}")
        if entry and isinstance(entry.get("value"), (int, float)):
            return split, entry
    return None


def header_text(record: dict[str, Any], now: datetime | None = None) -> Text:
    """``running · epoch 3/10 ▰▰▱▱ · best R@1 0.6123 (3) · 0:03:00``; for a run on SLURM, its job on a second line
    (``slurm job 123_4: PENDING (Resources)``); and the error, if any."""
    text = Text()
    text.append_text(state_text(record["state"]))
    text.append(" · epoch ")
    text.append_text(progress_text(record.get("epoch"), record.get("epochs")))
    best = best_entry_of(record)
    text.append(" · best R@1 ")
    if best:
        split, entry = best
        text.append(metric_text(entry["value"]), style="bold")
        text.append(f" (epoch {entry.get('epoch')}{', val' if split == 'val' else ''})")
    else:
        text.append("-")
    text.append(f" · {duration_text(duration_seconds(record, now))}")
    if record.get("executor") == "slurm":
        text.append("\n")
        text.append_text(job_text(record))
    if record.get("error"):
        text.append("\n")
        text.append(str(record["error"]), style="red")
    return text


def resolved_config(record: dict[str, Any]) -> dict[str, Any]:
    """The run's resolved config (its run directory's config.toml; empty if it is gone)."""
    return load_config(record)


def default_config() -> dict[str, Any]:
    """Every key's default (pydantic defaults, without validation: no torch import)."""
    from engine.config.schema import Config

    return Config.model_construct().to_dict()


def _show(value: Any) -> str:
    """TOML-like: strings quoted, booleans lower case, lists as JSON."""
    return json.dumps(value)


@dataclass
class ConfigLine:
    section: str
    key: str  # dotted, inside the section
    value: str
    default: str | None  # the default's text when the value differs from it, else None


def config_lines(config: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[ConfigLine]:
    """The config as section/key/value lines. Parameters of the losses and miners that the run does not use are
    left out unless they were changed; a value that differs from its default carries the default."""
    defaults = flatten_config(defaults or {})
    lines = []
    for section, values in config.items():
        if not isinstance(values, dict):
            lines.append(ConfigLine("", section, _show(values), None))
            continue
        chosen = values.get("name") if section in ("loss", "miner") else None
        for key, value in flatten_config(values).items():
            dotted = f"{section}.{key}"
            differs = dotted in defaults and defaults[dotted] != value or dotted not in defaults and bool(defaults)
            group = key.split(".", 1)[0] if "." in key else None
            if chosen is not None and group is not None and group != chosen and not differs:
                continue
            default = (_show(defaults[dotted]) if dotted in defaults else "none") if differs else None
            lines.append(ConfigLine(section, key, _show(value), default))
    return lines


def config_text(lines: Sequence[ConfigLine]) -> Text:
    """``[section]`` headers, ``key = value``; a changed value is bold with a ``*`` and its default (readable in 16 colours)."""
    text = Text()
    section = None
    for line in lines:
        if line.section != section:
            section = line.section
            if text:
                text.append("\n")
            if section:
                text.append(f"[{section}]\n", style="bold")
        if line.default is not None:
            text.append(f"* {line.key} = {line.value}", style="bold yellow")
            text.append(f"   (default {line.default})\n", style="dim")
        else:
            text.append(f"  {line.key} = {line.value}\n")
    text.rstrip()
    return text or Text("(no config recorded)")


def size_text(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


def checkpoint_files(run_dir: str | os.PathLike) -> list[tuple[str, int, float]]:
    """(name, size in bytes, mtime) of every file in checkpoints/, by name."""
    try:
        entries = list(os.scandir(Path(run_dir) / "checkpoints"))
    except OSError:
        return []
    files = []
    for entry in entries:
        try:
            if entry.is_file() and not entry.name.startswith("."):  # leaves out atomic writes' temp files
                stat = entry.stat()
                files.append((entry.name, stat.st_size, stat.st_mtime))
        except OSError:
            continue
    return sorted(files)


def checkpoint_cells(files: Sequence[tuple[str, int, float]]) -> list[tuple[str, Text, str]]:
    return [(name, Text(size_text(size), justify="right"), datetime.fromtimestamp(mtime).strftime("%Y-%m-%d %H:%M:%S"))
            for name, size, mtime in files]


def clean_log_line(line: str) -> str:
    """The last state of a progress-bar line (after its last carriage return), without colour codes."""
    return _ANSI.sub("", line.rstrip("\r").rsplit("\r", 1)[-1])


# --------------------------------------------------------------------------- the incremental reader


@dataclass
class RunUpdate:
    """What changed in the run directory since the last poll."""

    rows_reset: bool = False  # the rows were rebuilt (first read, or metrics.jsonl replaced by a resume)
    changed_rows: list[dict[str, Any]] = field(default_factory=list)  # copies of the new or changed rows, by epoch
    columns: list[str] = field(default_factory=list)
    logs: dict[str, tuple[list[str], bool]] = field(default_factory=dict)  # file -> (new lines, reset)
    checkpoints: list[tuple[str, int, float]] | None = None  # the new listing, None when unchanged
    absent_logs: list[str] = field(default_factory=list)  # log files that do not exist (first poll only)

    def __bool__(self) -> bool:
        return bool(self.rows_reset or self.changed_rows or self.logs or self.checkpoints is not None)


class RunFiles:
    """One run directory, read incrementally; ``poll()`` is meant for a worker thread."""

    LOGS = ("train.log", "output.log")

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.metrics = metrics_tail(self.run_dir)
        self.logs = {name: log_tail(self.run_dir, name) for name in self.LOGS}
        self.rows: dict[int, dict[str, Any]] = {}
        self.columns: list[str] = []
        self.checkpoints: list[tuple[str, int, float]] | None = None
        self._first = True

    def sorted_rows(self) -> list[dict[str, Any]]:
        return [self.rows[e] for e in sorted(self.rows)]

    def poll(self) -> RunUpdate:
        update = RunUpdate()
        records, reset = self.metrics.read()
        if reset or self._first:
            self.rows = {}
            fold_records(self.rows, records)
            update.rows_reset = True
            update.changed_rows = [dict(r) for r in self.sorted_rows()]
        elif records:
            update.changed_rows = [dict(self.rows[e]) for e in fold_records(self.rows, records)]
        if update.rows_reset or update.changed_rows:
            self.columns = table_columns(self.rows.values())
        update.columns = list(self.columns)
        for name, tail in self.logs.items():
            lines, log_reset = tail.read()
            if lines or log_reset:
                update.logs[name] = ([clean_log_line(line) for line in lines[-LOG_LINES:]], log_reset)
            elif self._first and not tail.path.exists():
                update.absent_logs.append(name)
        files = checkpoint_files(self.run_dir)
        if files != self.checkpoints:
            self.checkpoints = files
            update.checkpoints = files
        self._first = False
        return update
