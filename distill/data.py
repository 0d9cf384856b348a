"""Labelled text datasets as JSON Lines: one ``{"text": str, "label": str}`` object per line.

Every problem names the file and the line, so a bad row in a 15k-line file is found in seconds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.errors import DataError


@dataclass(frozen=True)
class Dataset:
    texts: list[str]
    labels: list[str | None]
    """``None`` where a line carries no label (allowed only with ``require_labels=False``)."""
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def label_ids(self, label_names: Sequence[str]) -> list[int]:
        index = {name: i for i, name in enumerate(label_names)}
        return [index[label] for label in self.labels if label is not None]

    @property
    def label_set(self) -> list[str]:
        return sorted({label for label in self.labels if label is not None})


def read_jsonl(
    path: str | Path,
    *,
    require_labels: bool = True,
    known_labels: Sequence[str] | None = None,
    limit: int | None = None,
) -> Dataset:
    """Read a JSONL dataset; raise DataError naming ``path:line`` for the first bad row."""
    path = Path(path)
    known = set(known_labels) if known_labels is not None else None
    texts: list[str] = []
    labels: list[str | None] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as error:
        raise DataError(str(path), 0, f"cannot open: {error.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(str(path), number, f"not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(str(path), number, "expected a JSON object with 'text' and 'label'")
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise DataError(str(path), number, "missing or empty 'text'")
            label = row.get("label")
            if label is None and require_labels:
                raise DataError(str(path), number, "missing 'label'")
            if label is not None and not isinstance(label, str):
                raise DataError(str(path), number, f"'label' must be a string, got {type(label).__name__}")
            if label is not None and known is not None and label not in known:
                raise DataError(str(path), number, f"label {label!r} is not one the teacher knows")
            texts.append(text)
            labels.append(label)
            if limit is not None and len(texts) >= limit:
                break
    if not texts:
        raise DataError(str(path), 0, "no rows")
    return Dataset(texts, labels, str(path))


def split_jsonl(path: str | Path, held_rows: int, seed: int, into: str | Path) -> tuple[Path, Path]:
    """Split a JSONL file into (rest, held) with ``held_rows`` lines drawn at random (seeded).

    Writes ``<stem>.rest.jsonl`` and ``<stem>.held.jsonl`` into ``into``; the lines are copied verbatim, so
    nothing about a row changes but the file it lives in. Used to keep data aside that training never sees
    (an early-stopping slice, a calibration split).
    """
    path, into = Path(path), Path(into)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not 0 < held_rows < len(lines):
        raise DataError(str(path), 0, f"cannot hold out {held_rows} of {len(lines)} rows (need 0 < held < rows)")
    held = set(random.Random(seed).sample(range(len(lines)), held_rows))
    into.mkdir(parents=True, exist_ok=True)
    rest_path, held_path = into / f"{path.stem}.rest.jsonl", into / f"{path.stem}.held.jsonl"
    rest_path.write_text("".join(line + "\n" for i, line in enumerate(lines) if i not in held), encoding="utf-8")
    held_path.write_text("".join(line + "\n" for i, line in enumerate(lines) if i in held), encoding="utf-8")
    return rest_path, held_path
