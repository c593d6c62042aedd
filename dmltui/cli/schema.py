from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dmltui.cli.common import print_json


def schema(
    out: Annotated[Path | None, typer.Option("--out", help="write the schema to this file instead of stdout")] = None,
) -> None:
    """Print the JSON schema of the run configuration (every key, type, default and description)."""
    import json

    from engine.config.schema import json_schema
    from engine.io import atomic_write_text

    if out is None:
        print_json(json_schema())
    else:
        atomic_write_text(out, json.dumps(json_schema(), indent=2) + "\n")
