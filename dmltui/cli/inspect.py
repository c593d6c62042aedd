"""``dmltui inspect``, ``dmltui export`` and ``dmltui search``: what a run retrieves, and its model and embeddings
as files others can use."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from dmltui.cli.common import ExitCode, fail, print_json, stdout
from dmltui.selection import checkpoint_note


class Split(StrEnum):
    test = "test"
    val = "val"
    train = "train"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Method(StrEnum):
    umap = "umap"
    tsne = "tsne"


RunArgument = Annotated[str, typer.Argument(help="run id (or a unique prefix of one), or a run directory")]
CheckpointOption = Annotated[str, typer.Option("--checkpoint", help="best, last, or a checkpoint file")]
SplitOption = Annotated[Split, typer.Option("--split", help="the split to embed")]
DeviceOption = Annotated[Device, typer.Option("--device", help="where to embed: auto is the GPU when there is one")]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]


class EmbeddingProgress:
    """A rich progress bar on stderr, shown from the first batch on (a cached split never shows one)."""

    def __init__(self, what: str):
        self.what = what
        self.progress = None
        self.task = None

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = Console(stderr=True)
            self.progress = Progress(TextColumn(f"embedding {self.what}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=console, transient=True,
                                     disable=not console.is_terminal)  # a log file gets no bar
            self.progress.start()
            self.task = self.progress.add_task(self.what, total=total)
        self.progress.update(self.task, completed=done)

    def __enter__(self) -> EmbeddingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def check_output_path(path: Path | None, option: str, suffixes: tuple[str, ...]) -> None:
    """Exit 2 unless *path* can be written: a known suffix, in an existing folder."""
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        fail(f"{option} {path}: the file must end in {' or '.join(suffixes)}", ExitCode.USAGE)
    if not path.parent.is_dir():
        fail(f"{option} {path}: folder {path.parent} does not exist", ExitCode.USAGE)
    if path.is_dir():
        fail(f"{option} {path} is a folder; give a file name", ExitCode.USAGE)


def _run_dir(run: str) -> Path:
    from dmltui.inspect import RunNotFound, find_run_dir

    try:
        return find_run_dir(run)
    except RunNotFound as error:
        fail(str(error), ExitCode.NOT_FOUND)


def _embed_failed(error: Exception, whose: str = "") -> None:
    """Exit 3 for a missing checkpoint, 2 for another embedding problem; *whose* leads the message."""
    from engine.embed import CheckpointNotFound

    fail(f"{whose}{error}", ExitCode.NOT_FOUND if isinstance(error, CheckpointNotFound) else ExitCode.USAGE)


def inspect(
    run: RunArgument,
    checkpoint: CheckpointOption = "best",
    split: SplitOption = Split.test,
    k: Annotated[int, typer.Option("-k", "--neighbours", min=1, help="neighbours per query")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="the summary, worst queries, classes and confused pairs as JSON")] = False,
    png: Annotated[Path | None, typer.Option("--png", help="write a grid of the worst queries and their neighbours (with --against: of the --query in both runs)")] = None,
    projection: Annotated[Path | None, typer.Option("--projection", help="write a 2-D map of the split, coloured by class")] = None,
    method: Annotated[Method, typer.Option("--method", help="projection method: umap (umap-learn) or tsne (scikit-learn)")] = Method.umap,
    worst: Annotated[int, typer.Option("--worst", min=1, help="worst queries to list and to draw (with --against: example queries of each side)")] = 8,
    against: Annotated[str | None, typer.Option("--against", help="another run on the same dataset: the queries one gets right at rank 1 and the other wrong, recall@1 per class side by side")] = None,
    query: Annotated[int | None, typer.Option("--query", min=0, help="with --against: one query's neighbours in both runs (its row in the split)")] = None,
    device: DeviceOption = Device.auto,
) -> None:
    """What a run retrieves: per query the k nearest neighbours, the first correct one's rank and the AP (MAP@R);
    recall@1 per class; the most confused class pairs. The split's embeddings are cached in the run directory. With
    --against B: what the two runs retrieve differently."""
    if against is None and query is not None:
        fail("--query ROW shows one query in two runs: give --against RUN too", ExitCode.USAGE)
    if against is not None and projection is not None:
        fail("--projection maps one run's split: not with --against", ExitCode.USAGE)
    if against is not None and png is not None and query is None:
        fail("--png with --against draws one query in both runs: give --query ROW", ExitCode.USAGE)
    check_output_path(png, "--png", (".png",))
    check_output_path(projection, "--projection", (".png",))
    run_dir = _run_dir(run)
    from dmltui import inspect as inspection_ops

    if against is not None:
        other_dir = _run_dir(against)
        _inspect_against(_inspected(run_dir, split, checkpoint, k, device, "A"),
                         _inspected(other_dir, split, checkpoint, k, device, "B"),
                         query=query, png=png, examples=worst, as_json=as_json)
        return
    found = _inspected(run_dir, split, checkpoint, k, device)
    if png is not None:
        inspection_ops.write_png(found, png, worst=worst)
        print(f"wrote {png}", file=sys.stderr)
    if projection is not None:
        inspection_ops.write_projection(found, projection, method=method.value)
        print(f"wrote {projection}", file=sys.stderr)
    if as_json:
        print_json(found.report(worst=worst))
        return
    _print_report(found, worst)


def _inspected(run_dir: Path, split: Split, checkpoint: str, k: int, device: Device, side: str | None = None):
    """:func:`dmltui.inspect.inspect_run` of one run, with a progress bar while it embeds; exit 3 for a missing
    checkpoint, 2 for another problem. *side* (A or B) names which of two runs in the bar and in the message."""
    from dmltui import inspect as inspection_ops

    whose = f"run {side} ({run_dir}): " if side else ""
    try:
        with EmbeddingProgress(f"{side}'s {split.value} split" if side else f"the {split.value} split") as progress:
            return inspection_ops.inspect_run(run_dir, split=split.value, checkpoint=checkpoint, k=k,
                                              device=device.value, progress=progress)
    except inspection_ops.EmbedError as error:
        _embed_failed(error, whose)
    except ValueError as error:
        fail(f"{whose}{error}", ExitCode.USAGE)


def _inspect_against(a, b, *, query: int | None, png: Path | None, examples: int, as_json: bool) -> None:
    from dmltui.retrieval_diff import DifferentImages, RetrievalDiff, write_query_png

    try:
        diff = RetrievalDiff(a, b)
        chosen = diff.query(query) if query is not None else None
    except (DifferentImages, ValueError) as error:
        fail(str(error), ExitCode.USAGE)
    names = (a.run_dir.name, b.run_dir.name)
    if png is not None:
        write_query_png(diff, query, png, names=(f"A {names[0]}", f"B {names[1]}"))
        print(f"wrote {png}", file=sys.stderr)
    if as_json:
        print_json({**diff.report(examples=examples), **({"query": chosen} if chosen is not None else {})})
        return
    _print_against(diff, names, chosen, examples)


def _print_against(diff, names: tuple[str, str], chosen: dict[str, Any] | None, examples: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    for side, found, name in (("A", diff.a, names[0]), ("B", diff.b, names[1])):
        summary = found.summary()
        checkpoint = summary["checkpoint"]
        map_at_r = "-" if summary["map_at_r"] is None else f"{summary['map_at_r']:.4f}"
        note = checkpoint_note(checkpoint["chosen"])
        stdout.print(f"{side}: {escape(name)}, {checkpoint['name']} checkpoint (epoch {checkpoint['epoch']}): "
                     f"R@1 {summary['recall_at_1']:.4f} · MAP@R {map_at_r}" + (f" · {note}" if note else ""),
                     highlight=False)
    counts = diff.counts()
    stdout.print(f"{counts['queries']} {diff.a.split} queries at rank 1: A right, B wrong {counts['only_a']} · "
                 f"B right, A wrong {counts['only_b']} · both right {counts['both_right']} · both wrong "
                 f"{counts['both_wrong']} · R@1 A − B {diff.a.results.recall_at_1 - diff.b.results.recall_at_1:+.4f}",
                 highlight=False)
    if chosen is not None:
        _print_query(chosen)
        return
    # titles as lines of their own: rich would wrap a table's title to the width of its columns
    stdout.print("recall@1 per class, the largest differences first:", highlight=False)
    classes = Table("class", "size", "A R@1", "B R@1", "A − B", box=None, pad_edge=False)
    for row in diff.per_class()[:examples]:
        classes.add_row(escape(row["class"]), str(row["size"]), f"{row['a_recall_at_1']:.3f}",
                        f"{row['b_recall_at_1']:.3f}", f"{row['difference']:+.3f}")
    stdout.print(classes)
    report = diff.report(examples=examples, classes=0)
    shown = min(diff.a.results.k, 5)
    for key, title in (("only_a_queries", "A right, B wrong"), ("only_b_queries", "B right, A wrong")):
        stdout.print(f"{title} at rank 1, the classes that differ most first (--query ROW shows one):",
                     highlight=False)
        table = Table("query", "class", f"A: top {shown}", f"B: top {shown}", box=None, pad_edge=False)
        for example in report[key]:
            table.add_row(str(example["row"]), escape(example["class"]), _marks(example["a"], shown),
                          _marks(example["b"], shown))
        stdout.print(table)


def _marks(side: dict[str, Any], count: int) -> str:
    """✓ (same class) or ✗ per neighbour, nearest first."""
    return "".join("✓" if n["correct"] else "✗" for n in side["neighbours"][:count])


def _print_query(chosen: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    def ap(side: str) -> str:
        return "-" if chosen[side]["ap"] is None else f"{chosen[side]['ap']:.3f}"

    stdout.print(f"query {chosen['row']}: {escape(chosen['class'])} ({escape(chosen['path'])}) · A: AP {ap('a')}, "
                 f"first hit {chosen['a']['first_hit'] or '-'} · B: AP {ap('b')}, first hit "
                 f"{chosen['b']['first_hit'] or '-'}", highlight=False)
    table = Table("rank", "A: class", "distance", "B: class", "distance", box=None, pad_edge=False)
    for rank, (mine, theirs) in enumerate(zip(chosen["a"]["neighbours"], chosen["b"]["neighbours"], strict=True), 1):
        table.add_row(str(rank), ("✓ " if mine["correct"] else "✗ ") + escape(mine["class"]), f"{mine['distance']:.3f}",
                      ("✓ " if theirs["correct"] else "✗ ") + escape(theirs["class"]), f"{theirs['distance']:.3f}")
    stdout.print(table)


def _print_report(found, worst: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    summary = found.summary()
    checkpoint = summary["checkpoint"]
    map_at_r = "-" if summary["map_at_r"] is None else f"{summary['map_at_r']:.4f}"
    stdout.print(f"{summary['split']} split, {checkpoint['name']} checkpoint (epoch {checkpoint['epoch']}): "
                 f"{summary['images']} images, {summary['classes']} classes · R@1 {summary['recall_at_1']:.4f} · "
                 f"MAP@R {map_at_r}" + (" · cached embeddings" if summary["cached"] else ""), highlight=False)
    note = checkpoint_note(checkpoint["chosen"])
    if note:
        stdout.print(f"{checkpoint['name']} checkpoint {note}", highlight=False)
    table = Table("query", "class", "AP", "first hit", f"top {min(found.results.k, 5)} (✓ same class, ✗ other)",
                  title=f"the {worst} worst queries", box=None, pad_edge=False, title_justify="left")
    for query in found.worst_queries(worst):
        marks = " ".join(("✓" if n["correct"] else "✗") + f" {n['distance']:.3f}" for n in query["neighbours"][:5])
        table.add_row(str(query["row"]), escape(query["class"]), "-" if query["ap"] is None else f"{query['ap']:.3f}",
                      str(query["first_hit"] or "-"), marks)
    stdout.print(table)
    classes = Table("class", "size", "R@1", title="the classes with the lowest recall@1", box=None, pad_edge=False,
                    title_justify="left")
    for row in found.classes()[:worst]:
        classes.add_row(escape(row["class"]), str(row["size"]), f"{row['recall_at_1']:.3f}")
    stdout.print(classes)
    pairs = Table("classes", "count", title="the most confused pairs (one among the other's neighbours)", box=None,
                  pad_edge=False, title_justify="left")
    for pair in found.confused_pairs(worst):
        pairs.add_row(escape(" ↔ ".join(pair["classes"])), str(pair["count"]))
    stdout.print(pairs)


def export(
    run: RunArgument,
    checkpoint: CheckpointOption = "best",
    split: Annotated[Split, typer.Option("--split", help="the split of --embeddings and --index")] = Split.test,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="write the model as ONNX (checked with onnxruntime)")] = None,
    torchscript: Annotated[Path | None, typer.Option("--torchscript", help="write the model as TorchScript")] = None,
    embeddings: Annotated[Path | None, typer.Option("--embeddings", help="write the split's embeddings (.npy or .npz)")] = None,
    index: Annotated[Path | None, typer.Option("--index", help="write a faiss index of the split (FILE.faiss, and FILE.faiss.json beside it)")] = None,
    device: DeviceOption = Device.auto,
    as_json: JsonOption = False,
) -> None:
    """Export a run's model (ONNX, TorchScript) and a split's embeddings (.npy/.npz, faiss index)."""
    if not any((onnx, torchscript, embeddings, index)):
        fail("nothing to export: give --onnx, --torchscript, --embeddings and/or --index", ExitCode.USAGE)
    check_output_path(onnx, "--onnx", (".onnx",))
    check_output_path(torchscript, "--torchscript", (".pt", ".ts", ".torchscript"))
    check_output_path(embeddings, "--embeddings", (".npy", ".npz"))
    check_output_path(index, "--index", (".faiss",))
    run_dir = _run_dir(run)
    from dmltui import export as export_ops
    from engine.embed import EmbedError, checkpoint_choice, embed, resolve_checkpoint

    written: dict[str, Any] = {}
    try:
        ckpt = resolve_checkpoint(run_dir, checkpoint)
        if onnx is not None:
            written["onnx"] = export_ops.export_onnx(ckpt, onnx)
        if torchscript is not None:
            written["torchscript"] = export_ops.export_torchscript(ckpt, torchscript)
        if embeddings is not None or index is not None:
            with EmbeddingProgress(f"the {split.value} split") as progress:
                vectors = embed(ckpt, split.value, device=device.value, progress=progress)
            if embeddings is not None:
                written["embeddings"] = export_ops.export_embeddings(vectors, embeddings)
            if index is not None:
                written["index"] = export_ops.export_index(vectors, index, run_dir)
    except EmbedError as error:
        _embed_failed(error)
    except export_ops.ExportError as error:
        fail(str(error), ExitCode.FAILED)
    chosen = checkpoint_choice(ckpt.path)
    if as_json:
        print_json({**written, "checkpoint": {"name": ckpt.name, "path": str(ckpt.path), "chosen": chosen}})
        return
    for kind, info in written.items():  # plain lines: paths are never wrapped
        extra = (f" (max |Δ| from torch on {info['batch']} test images: {info['max_abs_difference']:.1e})"
                 if "max_abs_difference" in info else "")
        print(f"{kind}: {info['path']}{extra}")
    note = checkpoint_note(chosen)
    print(f"checkpoint: {ckpt.path}" + (f", {note}" if note else ""))


def search(
    index: Annotated[Path, typer.Argument(help="a faiss index written by `dmltui export --index`")],
    images: Annotated[list[Path], typer.Argument(help="image files to search for")],
    k: Annotated[int, typer.Option("-k", "--neighbours", min=1, help="gallery images per query")] = 5,
    device: DeviceOption = Device.auto,
    as_json: JsonOption = False,
) -> None:
    """The nearest gallery images of new images: embeds them with the checkpoint the index was built with (recorded
    in INDEX.json beside it) and ranks the gallery by Euclidean distance."""
    from dmltui import export as export_ops
    from engine.embed import EmbedError

    missing = next((p for p in images if not p.is_file()), None)
    if missing is not None:
        fail(f"image {missing} does not exist", ExitCode.NOT_FOUND)
    try:
        found = export_ops.search(index, images, k=k, device=device.value)
    except FileNotFoundError as error:
        fail(str(error), ExitCode.NOT_FOUND)
    except EmbedError as error:
        _embed_failed(error)
    except export_ops.ExportError as error:
        fail(str(error), ExitCode.FAILED)
    note = checkpoint_note(found[0]["checkpoint"]["chosen"]) if found else None
    if note:  # on stderr: stdout keeps one block of lines per image
        print(f"note: the index's checkpoint {found[0]['checkpoint']['path']} was {note}", file=sys.stderr)
    if as_json:
        print_json(found)
        return
    lines = []  # plain lines: paths are never wrapped or cut
    for result in found:
        lines.append(f"{result['image']}:")
        lines += [f"  {n['rank']:>3}  {n['distance']:.4f}  {n['class'] or '-'}  {n['path']}" for n in result["neighbours"]]
    print("\n".join(lines))
