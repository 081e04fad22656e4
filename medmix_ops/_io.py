"""Atomic file writes for every result the library produces (JSON, tables, plots, image grids,
checkpoints): write a temporary file beside the target, then rename it into place, so a reader
or a run killed mid-write never sees half a file."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, fsync: bool = False):
    """Yields a temporary path beside ``path`` (same suffix, so writers that choose a format
    from the suffix still work); renames it onto ``path`` when the block succeeds and removes it
    when it fails. ``fsync=True`` also flushes it to disk first (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, data, indent: int = 2) -> str:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent))
    return str(path)


def write_text(path, text: str) -> str:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return str(path)


def save_figure(fig, path) -> str:
    """A matplotlib figure to ``path`` (format from its suffix), atomically; closes the figure."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return str(path)
