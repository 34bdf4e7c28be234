"""DataReport: what the readers skipped or converted, and why.

Every file a reader could not use as-is ends up here with its path and a sentence saying why, so a
run never stops half-way through an epoch on a bad file and the user can see what was left out.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path


class DataReport:
    """Collects skipped files, converted files and counters; thread-safe.

    ``to_dict()`` gives ``{"skipped": [{"path", "reason", "field"}], "converted": [{"path",
    "reason", "to"}], "counts": {key: int}, "num_skipped": int, "num_converted": int}``.
    """

    def __init__(self):
        self.skipped: list[dict] = []
        self.converted: list[dict] = []
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def skip(self, path, reason: str, field: str | None = None) -> None:
        """Records that ``path`` is left out; ``field`` names the check that failed
        (``"extension"``, ``"decode"``, ``"size"``, ``"layout"``, ``"class"``)."""
        with self._lock:
            self.skipped.append({"path": str(path), "reason": reason, "field": field})

    def convert(self, path, reason: str, to=None) -> None:
        """Records that ``path`` is used through a converted copy ``to`` (the user's file is
        left untouched)."""
        with self._lock:
            self.converted.append({"path": str(path), "reason": reason,
                                   "to": None if to is None else str(to)})

    def count(self, key: str, n: int = 1) -> None:
        """Adds ``n`` to the counter ``key``."""
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + int(n)

    def merge(self, other: DataReport) -> DataReport:
        """Appends ``other``'s entries and adds its counters; returns ``self``."""
        data = other.to_dict()
        with self._lock:
            self.skipped.extend(data["skipped"])
            self.converted.extend(data["converted"])
            for key, n in data["counts"].items():
                self.counts[key] = self.counts.get(key, 0) + n
        return self

    def to_dict(self) -> dict:
        """A JSON-ready copy of the report."""
        with self._lock:
            return {
                "skipped": [dict(e) for e in self.skipped],
                "converted": [dict(e) for e in self.converted],
                "counts": dict(self.counts),
                "num_skipped": len(self.skipped),
                "num_converted": len(self.converted),
            }

    def save(self, path) -> Path:
        """Writes the report as indented JSON to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def reasons_for(self, path) -> list[str]:
        """Every skip or conversion reason recorded for ``path``."""
        key = str(path)
        with self._lock:
            return [e["reason"] for e in self.skipped + self.converted if e["path"] == key]

    def __repr__(self) -> str:
        return (f"DataReport(skipped={len(self.skipped)}, converted={len(self.converted)}, "
                f"counts={self.counts})")
