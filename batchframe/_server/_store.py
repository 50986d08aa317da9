"""Files and batches of the local server, in memory and (with ``state_dir``) on disk.

File contents always live on disk: under ``state_dir/files`` when one is given, else in
a temporary directory removed on close. Metadata lives in memory and, with a
``state_dir``, also as one JSON document per object, written atomically on every
change of state, so a restarted server finds every file and batch again.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
#: Default lifetime of ``purpose="batch"`` uploads (30 days); other purposes never expire.
BATCH_FILE_TTL_SECONDS = 30 * 86_400


def new_id(prefix: str) -> str:
    """Return a fresh random object id such as ``file-6f1c...`` or ``batch_9a2e...``."""
    return prefix + secrets.token_hex(12)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class BatchRecord:
    """A batch: the public object plus what the server needs to run it."""

    batch: dict[str, Any]
    seq: int
    created: float
    output_expires_seconds: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Store:
    """Thread-safe holder of files and batches.

    Parameters
    ----------
    state_dir
        Directory that keeps everything across restarts; ``None`` for a temporary one.
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None) -> None:
        self.lock = threading.RLock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="batchframe-server-")
            self.root = Path(self._tmp.name)
        else:
            self.root = Path(state_dir)
        self.persist = state_dir is not None
        for sub in ("files", "batches", "work"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, BatchRecord] = {}
        self._seq = 0
        if self.persist:
            self._load()

    # -- lifecycle ---------------------------------------------------------------------

    def _load(self) -> None:
        shutil.rmtree(self.root / "work", ignore_errors=True)
        (self.root / "work").mkdir()
        metas = []
        for path in (self.root / "files").glob("*.json"):
            meta = orjson.loads(path.read_bytes())
            if self.content_path(meta["id"]).exists():
                metas.append(meta)
        for meta in sorted(metas, key=lambda m: (m["created_at"], m.get("_seq", 0))):
            self.files[meta["id"]] = meta
        records = []
        for path in (self.root / "batches").glob("*.json"):
            doc = orjson.loads(path.read_bytes())
            records.append(
                BatchRecord(
                    batch=doc["batch"],
                    seq=doc["seq"],
                    created=doc["created"],
                    output_expires_seconds=doc.get("output_expires_seconds"),
                    extra=doc.get("extra", {}),
                )
            )
        for record in sorted(records, key=lambda r: r.seq):
            self.batches[record.batch["id"]] = record
        seqs = [r.seq for r in records] + [m.get("_seq", 0) for m in metas]
        self._seq = max(seqs, default=0)

    def close(self) -> None:
        """Remove the temporary directory, if the store made one."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def next_seq(self) -> int:
        """Return the next creation sequence number (orders objects created in one second)."""
        with self.lock:
            self._seq += 1
            return self._seq

    def work_path(self, name: str) -> Path:
        """Return a path for a file being written (moved into place when done)."""
        return self.root / "work" / name

    # -- files -------------------------------------------------------------------------

    def content_path(self, file_id: str) -> Path:
        """Where the bytes of a file live."""
        return self.root / "files" / f"{file_id}.bin"

    def _save_file(self, meta: dict[str, Any]) -> None:
        if self.persist:
            _write_atomic(self.root / "files" / f"{meta['id']}.json", orjson.dumps(meta))

    def _register(
        self, file_id: str, *, filename: str, purpose: str, expires_at: int | None
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": file_id,
            "object": "file",
            "bytes": self.content_path(file_id).stat().st_size,
            "created_at": int(time.time()),
            "expires_at": expires_at,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
            "_seq": self.next_seq(),
        }
        with self.lock:
            self.files[file_id] = meta
            self._save_file(meta)
        return meta

    def add_file(
        self, data: bytes | memoryview, *, filename: str, purpose: str, expires_at: int | None
    ) -> dict[str, Any]:
        """Store uploaded bytes as a new file and return its metadata."""
        file_id = new_id("file-")
        path = self.content_path(file_id)
        tmp = self.work_path(f"{file_id}.upload")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return self._register(file_id, filename=filename, purpose=purpose, expires_at=expires_at)

    def adopt_file(
        self, path: Path, *, filename: str, purpose: str, expires_at: int | None
    ) -> dict[str, Any]:
        """Move a finished file (written under :meth:`work_path`) into the store."""
        file_id = new_id("file-")
        os.replace(path, self.content_path(file_id))
        return self._register(file_id, filename=filename, purpose=purpose, expires_at=expires_at)

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        """Return a file's metadata, or ``None`` if it does not exist (or has expired)."""
        with self.lock:
            meta = self.files.get(file_id)
            if meta is None:
                return None
            if meta["expires_at"] is not None and meta["expires_at"] <= time.time():
                self.delete_file(file_id)
                return None
            return meta

    def delete_file(self, file_id: str) -> bool:
        """Delete a file; return whether it existed."""
        with self.lock:
            meta = self.files.pop(file_id, None)
            if meta is None:
                return False
            self.content_path(file_id).unlink(missing_ok=True)
            (self.root / "files" / f"{file_id}.json").unlink(missing_ok=True)
            return True

    def list_files(self, *, purpose: str | None = None) -> list[dict[str, Any]]:
        """Every live file, oldest first, optionally of one purpose."""
        with self.lock:
            ids = list(self.files)
        out = []
        for file_id in ids:
            meta = self.get_file(file_id)
            if meta is not None and (purpose is None or meta["purpose"] == purpose):
                out.append(meta)
        return out

    def read_content(self, file_id: str) -> bytes | None:
        """Return a file's bytes, or ``None`` if it is gone."""
        if self.get_file(file_id) is None:
            return None
        try:
            return self.content_path(file_id).read_bytes()
        except FileNotFoundError:
            return None

    # -- batches -----------------------------------------------------------------------

    def add_batch(self, record: BatchRecord) -> None:
        """Keep a new batch (and persist it)."""
        with self.lock:
            self.batches[record.batch["id"]] = record
            self.save_batch(record.batch["id"])

    def record(self, batch_id: str) -> BatchRecord | None:
        """Return the live record of a batch (mutate only under :attr:`lock`)."""
        with self.lock:
            return self.batches.get(batch_id)

    def save_batch(self, batch_id: str) -> None:
        """Persist a batch's current state (no-op without ``state_dir``)."""
        if not self.persist:
            return
        with self.lock:
            record = self.batches[batch_id]
            doc = {
                "batch": record.batch,
                "seq": record.seq,
                "created": record.created,
                "output_expires_seconds": record.output_expires_seconds,
                "extra": record.extra,
            }
            data = orjson.dumps(doc)
        _write_atomic(self.root / "batches" / f"{batch_id}.json", data)

    def update(self, batch_id: str, **fields: Any) -> None:
        """Set fields of a batch object and persist it."""
        with self.lock:
            self.batches[batch_id].batch.update(fields)
            self.save_batch(batch_id)

    def batch_json(self, batch_id: str) -> dict[str, Any] | None:
        """Return a deep copy of a batch object, safe to hand out."""
        with self.lock:
            record = self.batches.get(batch_id)
            if record is None:
                return None
            copy: dict[str, Any] = orjson.loads(orjson.dumps(record.batch))
            return copy

    def list_batches(self) -> list[dict[str, Any]]:
        """Deep copies of every batch, newest first (the API's order)."""
        with self.lock:
            ordered = sorted(self.batches.values(), key=lambda r: r.seq, reverse=True)
            data: list[dict[str, Any]] = orjson.loads(orjson.dumps([r.batch for r in ordered]))
            return data


def public_file(meta: dict[str, Any]) -> dict[str, Any]:
    """Return the FileObject JSON of a file's metadata (internal keys removed)."""
    return {k: v for k, v in meta.items() if not k.startswith("_")}
