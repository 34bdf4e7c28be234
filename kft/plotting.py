"""Figure saving shared by data galleries and evaluation plots (no package imports, so data
and eval both use it without importing each other)."""

from __future__ import annotations

import os


def save_figure(fig, path: str | os.PathLike) -> str:
    """Saves a matplotlib ``fig`` as PNG, creating parent folders; returns ``str(path)``."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path
