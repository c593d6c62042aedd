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


def _output_path(path: Path | None, option: str, suffixes: tuple[str, ...]) -> None:
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


def _embed_failed(error: Exception) -> None:
    from engine.embed import CheckpointNotFound

    fail(str(error), ExitCode.NOT_FOUND if isinstance(error, CheckpointNotFound) else ExitCode.USAGE)


def inspect(
    run: RunArgument,
    checkpoint: CheckpointOption = "best",
    split: SplitOption = Split.test,
    k: Annotated[int, typer.Option("-k", "--neighbours", min=1, help="neighbours per query")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="the summary, worst queries, classes and confused pairs as JSON")] = False,
    png: Annotated[Path | None, typer.Option("--png", help="write a grid of the worst queries and their neighbours")] = None,
    projection: Annotated[Path | None, typer.Option("--projection", help="write a 2-D map of the split, coloured by class")] = None,
    method: Annotated[Method, typer.Option("--method", help="projection method: umap (umap-learn) or tsne (scikit-learn)")] = Method.umap,
    worst: Annotated[int, typer.Option("--worst", min=1, help="worst queries to list and to draw")] = 8,
    device: DeviceOption = Device.auto,
) -> None:
    """What a run retrieves: per query the k nearest neighbours, the first correct one's rank and the AP (MAP@R);
    recall@1 per class; the most confused class pairs. The split's embeddings are cached in the run directory."""
    _output_path(png, "--png", (".png",))
    _output_path(projection, "--projection", (".png",))
    run_dir = _run_dir(run)
    from dmltui import inspect as inspection_ops

    try:
        with EmbeddingProgress(f"the {split.value} split") as progress:
            found = inspection_ops.inspect_run(run_dir, split=split.value, checkpoint=checkpoint, k=k,
                                               device=device.value, progress=progress)
    except inspection_ops.EmbedError as error:
        _embed_failed(error)
    except ValueError as error:
        fail(str(error), ExitCode.USAGE)
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
    _output_path(onnx, "--onnx", (".onnx",))
    _output_path(torchscript, "--torchscript", (".pt", ".ts", ".torchscript"))
    _output_path(embeddings, "--embeddings", (".npy", ".npz"))
    _output_path(index, "--index", (".faiss",))
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
