"""The traffic log writer: complete shards, text policies, bounded buffer, failures counted, crash safety."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from serving.traffic_log import MAX_REQUEST_ID_CHARS, SCHEMA_VERSION, TrafficLogWriter, TrafficRecord, read_traffic_log

LABELS = ["a", "b", "c"]


def _record(i: int, reason: str = "escalation") -> TrafficRecord:
    return TrafficRecord(
        request_id=f"r{i}",
        time=1_700_000_000 + i,
        reason=reason,  # type: ignore[arg-type]
        text=f"text {i}",
        student_label="a",
        student_probs=[0.5, 0.3, 0.2],
        teacher_logits=[1.0, 2.0, -1.0] if reason != "sampled" else None,
        student_version="s:1",
        teacher_version="t:1",
    )


def test_by_default_only_a_salted_hash_is_kept_in_files_only_the_owner_reads(tmp_path: Path) -> None:
    writer = TrafficLogWriter(tmp_path, LABELS, text_policy={}, flush_interval_s=3600)
    record = _record(1)
    writer.record(dataclasses.replace(record, request_id="x" * 5000))
    shard = writer.flush()
    writer.close()
    assert shard is not None
    assert stat.S_IMODE(shard.stat().st_mode) == 0o600 and stat.S_IMODE(shard.parent.stat().st_mode) == 0o700
    row = read_traffic_log(tmp_path)[0].to_pylist()[0]
    assert row["text"] is None and len(row["text_hash"]) == 64
    assert row["text_hash"] != hashlib.sha256(b"text 1").hexdigest()  # salted, even with no salt configured
    assert row["request_id"] == "x" * MAX_REQUEST_ID_CHARS


def test_records_round_trip_with_schema_version_labels_and_text_policies(tmp_path: Path) -> None:
    writer = TrafficLogWriter(
        tmp_path,
        LABELS,
        text_policy={"escalation": "text", "shadow": "hash", "sampled": "none"},
        salt="pepper",
        flush_interval_s=3600,
    )
    writer.record(_record(1))
    writer.record(_record(2, "shadow"))
    writer.record(_record(3, "sampled"))
    shard = writer.flush()
    writer.close()
    assert shard is not None and shard.name.startswith("shard-") and shard.suffix == ".parquet"
    table, labels = read_traffic_log(tmp_path)
    assert labels == LABELS
    rows = table.to_pylist()
    assert [r["reason"] for r in rows] == ["escalation", "shadow", "sampled"]
    assert {r["schema_version"] for r in rows} == {SCHEMA_VERSION}
    assert rows[0]["text"] == "text 1" and rows[0]["text_hash"] is None
    assert rows[1]["text"] is None and len(rows[1]["text_hash"]) == 64 and rows[1]["text_hash"] != "text 2"
    assert rows[2]["text"] is None and rows[2]["text_hash"] is None
    assert rows[0]["teacher_logits"] == pytest.approx([1.0, 2.0, -1.0])
    assert rows[2]["teacher_logits"] is None
    # `since` keeps only newer records
    newer, _ = read_traffic_log(tmp_path, since=1_700_000_001.5)
    assert [r["request_id"] for r in newer.to_pylist()] == ["r2", "r3"]


def test_a_full_buffer_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    writer = TrafficLogWriter(tmp_path, LABELS, text_policy={}, flush_interval_s=3600, max_buffered=5)
    accepted = [writer.record(_record(i)) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert writer.dropped == 3
    writer.close()
    table, _ = read_traffic_log(tmp_path)
    assert table.num_rows == 5 and writer.written == 5


def test_a_shard_that_cannot_be_written_is_dropped_and_counted(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log folder should be")
    writer = TrafficLogWriter(blocked, LABELS, text_policy={}, flush_interval_s=3600)
    writer.record(_record(1))
    writer.record(_record(2))
    assert writer.flush() is None
    assert writer.dropped == 2 and writer.written == 0
    writer.close()


def test_shards_rotate_by_size(tmp_path: Path) -> None:
    writer = TrafficLogWriter(tmp_path, LABELS, text_policy={}, flush_interval_s=3600, max_rows_per_shard=4)
    for i in range(10):
        writer.record(_record(i))
    writer.close()
    shards = sorted(tmp_path.glob("*/shard-*.parquet"))
    assert [pq.read_metadata(s).num_rows for s in shards] == [4, 4, 2]


@pytest.mark.slow
def test_ray_data_reads_the_same_rows_as_pyarrow(tmp_path: Path, ray_session: int) -> None:
    """What the job reads on a cluster (``--reader ray``) is what it reads on one machine."""
    for writer_number in range(2):  # two writers, as two ingress replicas: two folders of shards
        writer = TrafficLogWriter(tmp_path, LABELS, text_policy={}, flush_interval_s=3600, max_rows_per_shard=3)
        for i in range(writer_number * 10, writer_number * 10 + 10):
            writer.record(_record(i, "shadow" if i % 4 == 0 else "sampled" if i % 5 == 0 else "escalation"))
        writer.close()
    since = 1_700_000_000 + 12.5  # one read (Ray Data's start-up costs seconds), the time filter applied
    local, labels = read_traffic_log(tmp_path, since=since)
    distributed, ray_labels = read_traffic_log(tmp_path, since=since, engine="ray")
    assert ray_labels == labels == LABELS
    assert distributed.schema.equals(local.schema)
    key = [("request_id", "ascending")]
    assert distributed.sort_by(key).to_pylist() == local.sort_by(key).to_pylist()
    assert local.num_rows == 7 and read_traffic_log(tmp_path)[0].num_rows == 20


CRASHING_WRITER = """
import sys, time
from serving.traffic_log import TrafficLogWriter, TrafficRecord
writer = TrafficLogWriter(sys.argv[1], ["a", "b"], text_policy={}, flush_interval_s=0.05, writer_id="w")
i = 0
while True:
    writer.record(TrafficRecord(f"r{i}", time.time(), "escalation", "x" * 200, "a", [0.6, 0.4], [1.0, 0.0], "s", "t"))
    i += 1
    time.sleep(0.0005)  # well under what a flush drains: nothing is dropped, so ids have no gaps
"""


def test_a_writer_killed_mid_write_leaves_every_earlier_shard_readable(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(tmp_path)], cwd=Path(__file__).parents[1])
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("w/shard-*.parquet"))) < 5 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)  # no flush, no cleanup: as a crashed replica
    finally:
        process.wait(timeout=30)
    shards = sorted(tmp_path.glob("w/shard-*.parquet"))
    assert len(shards) >= 5
    total = 0
    for shard in shards:
        table = pq.read_table(shard)  # every shard on disk is complete
        total += table.num_rows
        assert table.num_rows > 0
    table, _ = read_traffic_log(tmp_path)
    assert table.num_rows == total
    # request ids are consecutive from r0: nothing written before the crash is missing
    ids = sorted(int(r[1:]) for r in table.column("request_id").to_pylist())
    assert ids == list(range(len(ids)))
