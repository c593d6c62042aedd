"""First imports of the engine happen one thread at a time: two threads importing torchvision at once break its
circular imports. Every worker thread that may be the first to import the engine takes :data:`ENGINE_IMPORT` around
that import."""

from __future__ import annotations

import threading

ENGINE_IMPORT = threading.RLock()
