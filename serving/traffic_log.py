"""The traffic log: the requests the teacher answered, kept as Parquet for the next student.

Each writer (one per ingress replica) owns a folder ``<path>/<writer id>/`` and writes one complete
Parquet file per flush (``shard-<time>-<seq>.parquet``, written to a temporary name, fsynced and
renamed), so a shard on disk is always whole: a crash loses at most the records buffered since the
last flush, never a shard written before. Shards rotate by time (``flush_interval_s``) and size
(``max_rows_per_shard``, which also flushes early).

Privacy by default: a reason that ``text_policy`` does not name keeps a salted hash, not the text;
shards are written 0600 in folders made 0700 (only the gateway's user reads them); a request id is
kept to ``MAX_REQUEST_ID_CHARS``.

Writing never blocks or fails a request: ``record`` only appends to a bounded buffer, the flush runs
in a background thread, and a record that finds the buffer full, or a flush that fails (slow or full
disk), is dropped and counted (``dropped``, exported as ``cascade_traffic_log_dropped_total``).

Schema (``SCHEMA_VERSION`` 1; also in each file's metadata with the label names, in order):

| column | type | |
| --- | --- | --- |
| ``schema_version`` | int16 | |
| ``request_id`` | string | Ray Serve's X-Request-Id |
| ``time`` | timestamp[ms, UTC] | |
| ``reason`` | string | ``escalation`` / ``shadow`` / ``forced`` / ``sampled`` (teacher did not run) |
| ``text`` | string, null | the text, or null when the route keeps none |
| ``text_hash`` | string, null | salted SHA-256 of the text when the route keeps a hash |
| ``student_label`` | string, null | |
| ``student_probs`` | list<float32>, null | calibrated, in label order |
| ``teacher_logits`` | list<float32>, null | where the teacher ran |
| ``student_version`` / ``teacher_version`` | string | |
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from serving.vocabulary import LogReason

SCHEMA_VERSION = 1
MAX_REQUEST_ID_CHARS = 128
TextPolicy = Literal["text", "hash", "none"]

logger = logging.getLogger("cascade.traffic_log")


@dataclass(frozen=True)
class TrafficRecord:
    request_id: str
    time: float
    reason: LogReason
    text: str
    student_label: str | None
    student_probs: Sequence[float] | None
    teacher_logits: Sequence[float] | None
    student_version: str
    teacher_version: str


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("schema_version", pa.int16()),
            ("request_id", pa.string()),
            ("time", pa.timestamp("ms", tz="UTC")),
            ("reason", pa.string()),
            ("text", pa.string()),
            ("text_hash", pa.string()),
            ("student_label", pa.string()),
            ("student_probs", pa.list_(pa.float32())),
            ("teacher_logits", pa.list_(pa.float32())),
            ("student_version", pa.string()),
            ("teacher_version", pa.string()),
        ]
    )


class TrafficLogWriter:
    """Buffers records and writes them as Parquet shards from a background thread."""

    def __init__(
        self,
        path: str | Path,
        labels: Sequence[str],
        *,
        text_policy: Mapping[LogReason, TextPolicy],
        salt: str = "",
        flush_interval_s: float = 10.0,
        max_rows_per_shard: int = 10_000,
        max_buffered: int = 50_000,
        retention_days: float | None = None,
        writer_id: str | None = None,
    ) -> None:
        self.folder = Path(path) / (writer_id or f"writer-{uuid.uuid4().hex[:12]}")
        self.labels = list(labels)
        self.text_policy = text_policy
        self.salt = salt or secrets.token_hex(16)  # no salt given: hashes compare within this writer only
        self.flush_interval_s = flush_interval_s
        self.max_rows_per_shard = max_rows_per_shard
        self.retention_days = retention_days
        self.dropped = 0
        self.written = 0
        self._buffer: deque[TrafficRecord] = deque()
        self._max_buffered = max_buffered
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._sequence = 0
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()

    # --- the request path: never blocks, never raises --------------------------------------------

    def record(self, record: TrafficRecord) -> bool:
        """Queue one record; False (and counted as dropped) when the buffer is full."""
        with self._lock:
            if len(self._buffer) >= self._max_buffered:
                self.dropped += 1
                return False
            self._buffer.append(record)
            full = len(self._buffer) >= self.max_rows_per_shard
        if full:
            self._wake.set()
        return True

    # --- the background thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> Path | None:
        """Write what is buffered as one shard; on failure drop those records and count them."""
        with self._lock:
            batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), self.max_rows_per_shard))]
        if not batch:
            return None
        try:
            path = self._write(batch)
        except Exception:  # a slow or full disk must never reach a request: count and go on
            logger.warning("traffic log: dropped %d records, the shard could not be written", len(batch), exc_info=True)
            self.dropped += len(batch)
            return None
        self.written += len(batch)
        self._expire()
        return path

    def _write(self, batch: list[TrafficRecord]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {
            "schema_version": [SCHEMA_VERSION] * len(batch),
            "request_id": [r.request_id[:MAX_REQUEST_ID_CHARS] for r in batch],
            "time": [int(r.time * 1000) for r in batch],
            "reason": [r.reason for r in batch],
            "text": [r.text if self._policy(r) == "text" else None for r in batch],
            "text_hash": [self._hash(r.text) if self._policy(r) == "hash" else None for r in batch],
            "student_label": [r.student_label for r in batch],
            "student_probs": [list(r.student_probs) if r.student_probs is not None else None for r in batch],
            "teacher_logits": [list(r.teacher_logits) if r.teacher_logits is not None else None for r in batch],
            "student_version": [r.student_version for r in batch],
            "teacher_version": [r.teacher_version for r in batch],
        }
        schema = _schema().with_metadata(
            {"cascade.schema_version": str(SCHEMA_VERSION), "cascade.labels": "\n".join(self.labels)}
        )
        table = pa.Table.from_pydict(columns, schema=schema)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sequence += 1
        final = self.folder / f"shard-{int(time.time() * 1000):013d}-{self._sequence:06d}.parquet"
        staging = final.with_suffix(".parquet.tmp")
        with open(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as sink:
            pq.write_table(table, sink)
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, final)
        return final

    def _policy(self, record: TrafficRecord) -> TextPolicy:
        return self.text_policy.get(record.reason, "hash")

    def _hash(self, text: str) -> str:
        return hashlib.sha256((self.salt + text).encode("utf-8")).hexdigest()

    def _expire(self) -> None:
        if self.retention_days is None:
            return
        cutoff = time.time() - self.retention_days * 86400
        for shard in self.folder.glob("shard-*.parquet"):
            if shard.stat().st_mtime < cutoff:
                shard.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the thread and write everything still buffered."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=30)
        while self._buffer:
            if self.flush() is None and self._buffer:
                break


def read_traffic_log(
    path: str | Path, since: float | None = None, *, engine: Literal["pyarrow", "ray"] = "pyarrow"
) -> tuple[Any, list[str]]:
    """Every complete shard under ``path`` as one pyarrow Table (and the label names), newer than ``since``.

    ``engine="ray"`` reads the shards with Ray Data (in parallel across the cluster's workers, the
    time filter applied where each shard is read) and gathers the result; it needs a running Ray
    (``ray.init()``). Both engines read the same files and return the same rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards = sorted(Path(path).glob("*/shard-*.parquet"))  # complete shards only: temporaries are .tmp
    labels: list[str] = []
    for shard in shards:  # footers only: cheap, and a shard of another schema stops the run early
        metadata = pq.read_schema(shard).metadata or {}
        if int(metadata.get(b"cascade.schema_version", b"0")) != SCHEMA_VERSION:
            raise ValueError(
                f"{shard}: schema version {metadata.get(b'cascade.schema_version')} is not {SCHEMA_VERSION}"
            )
        labels = metadata[b"cascade.labels"].decode("utf-8").split("\n")
    schema = _schema()
    if not shards:
        return pa.Table.from_pylist([], schema=schema), labels
    cutoff = None if since is None else pa.scalar(int(since * 1000), pa.timestamp("ms", tz="UTC"))

    def newer(table: Any) -> Any:
        return table if cutoff is None else table.filter(pc.greater(table["time"], cutoff))

    if engine == "ray":
        import ray

        dataset = ray.data.read_parquet([str(shard) for shard in shards], schema=schema)
        tables = [t for t in ray.get(dataset.map_batches(newer, batch_format="pyarrow").to_arrow_refs()) if t.num_rows]
        if not tables:
            return pa.Table.from_pylist([], schema=schema), labels
        return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables]), labels
    return newer(pa.concat_tables([pq.read_table(shard).cast(schema) for shard in shards])), labels


__all__ = ["SCHEMA_VERSION", "TrafficLogWriter", "TrafficRecord", "read_traffic_log"]
