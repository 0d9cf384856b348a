"""Labelled text datasets as JSON Lines: one ``{"text": str, "label": str}`` object per line.

Every problem names the file and the line, so a bad row in a 15k-line file is found in seconds.
"""

from __future__ import annotations

import json
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
