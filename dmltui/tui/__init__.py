"""The Textual TUI (``dmltui`` with no arguments, or ``dmltui tui``)."""

from __future__ import annotations

import threading


def _probe_image_support() -> None:
    # textual-image asks the terminal what it can draw (kitty graphics, sixel, the cell size in pixels) when it is
    # first imported, which only works before Textual owns the terminal's input (the Retrieval tab shows images).
    try:
        import textual_image.widget  # noqa: F401
    except Exception:  # e.g. a terminal of 0 columns: the Retrieval tab then shows captions without images
        pass


def run_tui() -> None:
    probe = threading.Thread(target=_probe_image_support, name="image-probe", daemon=True)
    probe.start()  # the terminal answers while the app's modules load
    from dmltui.tui.app import DmlTuiApp

    probe.join()
    DmlTuiApp().run()
