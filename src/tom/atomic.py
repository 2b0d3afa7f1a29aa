"""Atomic file writes: a reader (Snakemake, a colleague, a resumed run) sees the old file or
the whole new one, never a partial one.

The data goes to a temporary file in the same folder, is flushed to disk (fsync), gets the
permissions an ordinary ``open`` would give under the current umask (``mkstemp`` creates files
0600, which colleagues on a shared cluster file system could not read), and is renamed over
the target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO[Any]], Any], binary: bool = False) -> None:
    """Call ``write(fh)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
