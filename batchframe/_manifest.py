"""The job's state on storage: a versioned manifest plus a lock file.

A job root holds::

    manifest.json        this module's Manifest, rewritten atomically after every outside action
    manifest.prev.json   the version before it (see "Damaged or missing state" below)
    lock.json            who drives the job right now (host, pid, process start time)
    shards/00003.jsonl   attempt 0 of shard 3, as written by ``Requests.write``
    shards/00003.a1.jsonl  attempt 1 (retryable rows of attempt 0, lines copied verbatim)
    outputs/00003.a0.jsonl, errors/00003.a0.jsonl   downloaded output and error files
    results/00003.a0.*.ok.parquet, *.failed.parquet  their rows, parsed once (a cache,
                         see batchframe._read)

Each *shard attempt* is one :class:`ShardAttempt` record and, once submitted, exactly one
live batch. Its ``status`` moves through :data:`TRANSITIONS`::

    pending ──upload──▶ uploaded ──intent saved──▶ submitting ──create──▶ validating
       │                  ▲  │                                          in_progress
       │                  │  └──▶ cancelled (job cancelled before it ran) finalizing
       │                  └── failed with token_limit_exceeded          cancelling
       └──▶ cancelled                                   (same file, submission + 1)
                                                        ──▶ completed | failed | expired | cancelled

``submitting`` is the write-ahead intent: it is saved *before* ``batches.create`` is
called, and a record found in that state on resume is reconciled against
``batches.list`` by its metadata tags (job, shard, attempt, submission) before anything
is created again. A record is *settled* (``settled_at`` set) once it is terminal, its
files are downloaded and the retries of its rows, if any, exist as child records.

Damaged or missing state
------------------------
A truncated or unreadable ``manifest.json`` (a torn write on a local disk after a power
loss, an editor, a sync tool) is recovered from ``manifest.prev.json``, with a warning.
The previous version is written only when it matters, so that on object stores (where
every save is a request) it costs about one PUT per round of uploads and per batch
created, not one per save: ``save`` writes the outgoing version to ``manifest.prev.json`` first when
its *skeleton* differs from what ``manifest.prev.json`` already holds. The skeleton is
what recovery cannot learn again from the provider by itself: the records that exist
(shard, attempt), each one's ``submission``, ``input_file_id`` and ``batch_id``, and
``cancel_requested``. So the previous version always has the skeleton of the version
just before the current one, and recovery loses at most one step's skeleton.

What one step can add, and why recovery never loses a batch:

* an intent (``uploaded`` -> ``submitting``) and then, maybe, a created batch: the
  previous version holds the record ``uploaded`` with its input file (uploads are
  saved before any intent: each on its own, or on object stores a round's together). On recovery every ``uploaded`` record without a batch id is turned
  back into an intent (``submitting``, ``intent_at`` now), so the engine lists the
  job's batches by their metadata tags (job, shard, attempt, submission) before
  creating anything, waits the usual grace for a create sent just before the crash,
  and adopts what it finds;
* a created batch's id (saved together with the next shard's intent): the previous
  version holds that record as an intent, reconciled the same way;
* an upload: the orphan file is adopted by its name (see ``batchframe._files``) or the
  upload is redone; no batch can come of it;
* a settlement, a child (retry) record or a requeue after ``token_limit_exceeded``:
  redone from the same downloaded files, with the same rows (a child shard is copied
  from its parent verbatim, so it gets the same sha256; a requeue gets the same
  submission number). The child's or the requeued batch cannot exist yet: creating it
  takes an upload and an intent, two more steps;
* ``cancel_requested``: part of the skeleton, so it is never lost.

The save that settles the job's last attempt writes both files (one more write per
job), so that a finished job recovers to its finished state: readers without a client
(``read_results``) get every row. During a run, the previous version may lack the
newest settlements; ``wait()`` settles those attempts again from the downloaded files
(nothing is created or downloaded again).

Where the storage honours conditional writes (S3), both files are written with
``If-Match`` on the ETag of the version this object last wrote: a driver that was taken
over cannot overwrite either (see :mod:`batchframe._fence`).

Everything else (statuses, request counts, downloads, row counts) is polled, downloaded
or parsed again. When no readable version is left, :class:`ManifestDamagedError` names
the file, the job id when it can still be read from the damaged bytes, and what to do.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

import orjson

from batchframe.exceptions import (
    InvalidTransitionError,
    JobError,
    JobLockedError,
    JobNotFoundError,
    ManifestDamagedError,
    ManifestVersionError,
)

if TYPE_CHECKING:
    import polars as pl

    from batchframe._api import RemoteBatch
    from batchframe._config import BatchLimits
    from batchframe._requests import JobFacts, Requests
    from batchframe._storage import Storage

__all__ = [
    "FORMAT_VERSION",
    "IN_FLIGHT",
    "LOCK_FILE",
    "LOCK_TTL",
    "MANIFEST_FILE",
    "PREVIOUS_MANIFEST_FILE",
    "REMOTE_TERMINAL",
    "TRANSITIONS",
    "LockInfo",
    "Manifest",
    "RecordStatus",
    "ShardAttempt",
    "acquire_lock",
    "batch_tags",
    "check_lock",
    "displaced_message",
    "find_tagged",
    "read_lock",
    "release_lock",
    "renew_lock",
]

_log = logging.getLogger("batchframe")

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
#: The version of the manifest before the current one, as far as recovery needs it.
PREVIOUS_MANIFEST_FILE = "manifest.prev.json"
LOCK_FILE = "lock.json"
#: Seconds after which a lock whose holder cannot be checked from here (another host,
#: container or boot) and has not renewed its heartbeat may be taken over. Holders
#: renew every ``LOCK_TTL / 4`` seconds while their job is open.
LOCK_TTL = 120.0

RecordStatus = Literal[
    "pending",
    "uploaded",
    "submitting",
    "validating",
    "in_progress",
    "finalizing",
    "cancelling",
    "completed",
    "failed",
    "expired",
    "cancelled",
]
STATUSES: tuple[str, ...] = get_args(RecordStatus)
REMOTE_LIVE: frozenset[str] = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
REMOTE_TERMINAL: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
#: Statuses whose batch (may) count against the enqueued-token queue.
IN_FLIGHT: frozenset[str] = REMOTE_LIVE | {"submitting"}
_REMOTE = REMOTE_LIVE | REMOTE_TERMINAL

#: Allowed moves. A remote status may jump ahead (polls can miss short states).
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"uploaded", "cancelled"}),
    "uploaded": frozenset({"submitting", "pending", "cancelled"}),
    "submitting": frozenset({"submitting", "uploaded", "pending"}) | _REMOTE,
    "validating": _REMOTE,
    "in_progress": _REMOTE - {"validating"},
    "finalizing": frozenset({"finalizing", "completed", "failed", "expired", "cancelled"}),
    "cancelling": frozenset({"cancelling", "cancelled", "completed", "failed", "expired"}),
    # `failed` -> `uploaded`: token_limit_exceeded, resubmitted from the same input file.
    "failed": frozenset({"uploaded"}),
    "completed": frozenset(),
    "expired": frozenset(),
    "cancelled": frozenset(),
}


def _now() -> float:
    return time.time()


@dataclass(slots=True, kw_only=True)
class ShardAttempt:
    """One attempt of one shard: an input file and (once submitted) one batch.

    Attempt 0 holds every row of the shard; attempt ``n + 1`` holds the rows of attempt
    ``n`` that failed in a retryable way. ``submission`` counts re-creations of the same
    attempt from the same input file after ``token_limit_exceeded`` (not a row retry).
    """

    shard: int
    attempt: int
    path: str
    sha256: str
    n_requests: int
    n_bytes: int = 0
    est_tokens: int = 0
    n_inputs: int = 0
    model: str | None = None
    parent: str | None = None
    status: RecordStatus = "pending"
    submission: int = 0
    input_file_id: str | None = None
    batch_id: str | None = None
    previous_batch_ids: list[str] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    output_path: str | None = None
    error_path: str | None = None
    output_downloaded: bool = False
    error_downloaded: bool = False
    total: int = 0
    completed: int = 0
    failed: int = 0
    batch_errors: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    n_ok: int | None = None
    n_final_failed: int | None = None
    n_retried: int | None = None
    inflight_tokens_at_submit: int | None = None
    not_before: float | None = None
    #: Seconds of retry backoff spent on the rows of this attempt's line so far.
    backoff_spent: float = 0.0
    #: Outage-like failures in a row along this attempt's line (0: the last was not).
    backoff_step: int = 0
    #: Other batches found tagged for this shard attempt (a second driver, or a create
    #: re-sent blindly): ``{"batch_id", "status", "completed", "action"}`` each.
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = field(default_factory=_now)
    uploaded_at: float | None = None
    intent_at: float | None = None
    submitted_at: float | None = None
    batch_created_at: int | None = None
    batch_ended_at: int | None = None
    terminal_at: float | None = None
    #: The batch's own phase timestamps (``in_progress_at``, ``finalizing_at``, ...).
    batch_timestamps: dict[str, int] = field(default_factory=dict)
    settled_at: float | None = None
    updated_at: float = field(default_factory=_now)
    last_error: str | None = None

    @property
    def key(self) -> str:
        """Stable name of this record, e.g. ``"00003.a1"``."""
        return f"{self.shard:05d}.a{self.attempt}"

    @property
    def is_terminal(self) -> bool:
        """Whether the batch (or the local record) will not change status any more."""
        return self.status in REMOTE_TERMINAL

    @property
    def is_settled(self) -> bool:
        """Terminal, downloaded and its retries (if any) scheduled."""
        return self.settled_at is not None

    @property
    def in_flight(self) -> bool:
        """Whether the batch may be queued or running at the API right now."""
        return self.status in IN_FLIGHT

    def move(self, status: RecordStatus) -> None:
        """Move to ``status``, checking :data:`TRANSITIONS`.

        Raises
        ------
        InvalidTransitionError
            When the move is not allowed (a bug, or a manifest edited by hand).
        """
        if status != self.status and status not in TRANSITIONS[self.status]:
            msg = (
                f"shard attempt {self.key} cannot move from `{self.status}` to `{status}`; "
                "the manifest may have been edited by hand. Restore it or start a new job root"
            )
            raise InvalidTransitionError(msg)
        self.status = status
        self.updated_at = _now()

    def apply(self, b: RemoteBatch) -> bool:
        """Copy the state of its remote batch into the record; return whether it changed."""
        before = self.to_dict()
        if b.status in STATUSES and b.status != self.status:
            self.move(b.status)  # type: ignore[arg-type]  # checked just above
        elif b.status not in STATUSES:
            _log.warning(
                "batch %s has an unknown status %r; treating it as running", b.id, b.status
            )
        if b.request_counts is not None:
            self.total = b.request_counts.total
            self.completed = b.request_counts.completed
            self.failed = b.request_counts.failed
        self.output_file_id = b.output_file_id
        self.error_file_id = b.error_file_id
        self.batch_created_at = b.created_at or self.batch_created_at
        self.batch_errors = [
            {"code": e.code, "message": e.message, "param": e.param, "line": e.line}
            for e in b.errors
        ]
        self.usage = b.usage
        if b.timestamps:
            self.batch_timestamps = {**self.batch_timestamps, **b.timestamps}
        if self.is_terminal:
            self.batch_ended_at = b.timestamps.get(f"{self.status}_at") or self.batch_ended_at
        if self.is_terminal and self.terminal_at is None:
            self.terminal_at = _now()
            _log.info("batch %s (shard attempt %s) is %s", b.id, self.key, self.status)
        changed = self.to_dict() != before
        if changed:
            self.updated_at = _now()
        return changed

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for the manifest.

        Its lists and dicts are copies, as ``dataclasses.asdict`` makes them, at a tenth
        of the cost: a save reads every record, so a job of 3,000 attempts spent ~0.15 s
        a save in ``asdict`` alone.
        """
        data = {name: getattr(self, name) for name in _RECORD_FIELDS}
        for name in _RECORD_CONTAINERS:
            data[name] = _plain(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardAttempt:
        """Inverse of :meth:`to_dict`; unknown keys (from newer minor versions) are dropped."""
        names = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in names})
        if record.status not in STATUSES:
            msg = f"unknown status `{record.status}` for shard attempt {record.key} in the manifest"
            raise JobError(msg)
        return record


_RECORD_FIELDS = tuple(f.name for f in fields(ShardAttempt))
#: The fields that may hold a list or a dict (annotations are strings here).
_RECORD_CONTAINERS = tuple(
    f.name for f in fields(ShardAttempt) if "list[" in str(f.type) or "dict[" in str(f.type)
)


def _plain(value: Any) -> Any:
    """``value`` with its lists and dicts copied (a record holds JSON values only)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(slots=True, kw_only=True)
class Manifest:
    """Everything needed to resume a job from its root, and nothing secret.

    It never holds the API key, the base URL's credentials or the client.
    """

    job_id: str
    endpoint: str
    fingerprint: str
    n_requests: int
    limits: dict[str, Any]
    options: dict[str, Any]
    json_schema: dict[str, Any] | None = None
    records: list[ShardAttempt] = field(default_factory=list)
    cancel_requested: bool = False
    #: Embeddings only: vector width per model (``""`` for no model), from the bodies'
    #: ``dimensions`` or else the first vector seen; results are typed with it.
    embedding_dims: dict[str, int] = field(default_factory=dict)
    queue: dict[str, dict[str, int | None]] = field(default_factory=dict)
    created_at: float = field(default_factory=_now)
    updated_at: float = field(default_factory=_now)
    format_version: int = FORMAT_VERSION
    #: The content last written or read (without ``updated_at``): a save of the same
    #: content is skipped, so that polls that changed nothing cost no request.
    _stored: bytes | None = field(default=None, repr=False, compare=False)
    #: The exact bytes of ``manifest.json`` as last written or read, and their skeleton.
    _stored_bytes: bytes | None = field(default=None, repr=False, compare=False)
    _stored_skeleton: bytes | None = field(default=None, repr=False, compare=False)
    #: Skeleton of what ``manifest.prev.json`` holds (``None``: unknown or absent).
    _previous_skeleton: bytes | None = field(default=None, repr=False, compare=False)
    #: Where the storage honours conditional writes: the ETag of ``manifest.json`` as
    #: this object last wrote or read it (``None``: the file is absent, or was not
    #: read), and of ``manifest.prev.json`` as it last wrote it (``None``: not yet).
    _etag: str | None = field(default=None, repr=False, compare=False)
    _prev_etag: str | None = field(default=None, repr=False, compare=False)
    #: The fencing token (lock epoch) of the driver that wrote this version, where the
    #: storage honours conditional writes (see :mod:`batchframe._fence`).
    lock_epoch: int | None = None
    #: Why the manifest was recovered from ``manifest.prev.json`` (``None``: it was not).
    recovered: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def start(
        cls,
        requests: Requests,
        written: pl.DataFrame,
        facts: JobFacts,
        *,
        limits: BatchLimits,
        options: dict[str, Any],
    ) -> Manifest:
        """Return a new job's manifest: one attempt-0 record per shard ``Requests.write`` wrote.

        ``facts`` (count, fingerprint, embedding widths) come from the same write, so a
        streamed input is read once.
        """
        from batchframe._requests import shard_path

        records = [
            ShardAttempt(
                shard=int(row["shard"]),
                attempt=0,
                path=row.get("rel") or shard_path(int(row["shard"])),
                sha256=str(row["sha256"]),
                n_requests=int(row["n_requests"]),
                n_bytes=int(row["n_bytes"]),
                est_tokens=int(row["est_tokens"]),
                n_inputs=int(row["n_inputs"]),
                model=row["model"],
            )
            for row in written.iter_rows(named=True)
        ]
        return cls(
            job_id=cls.new_job_id(),
            endpoint=requests.endpoint,
            fingerprint=facts.fingerprint,
            n_requests=facts.n_requests,
            limits=limits.to_dict(),
            options=options,
            json_schema=requests.json_schema,
            records=records,
            embedding_dims=dict(facts.embedding_dims),
        )

    @staticmethod
    def new_job_id() -> str:
        """Return a fresh random job id (``"bfj_"`` and 20 hex digits)."""
        return "bfj_" + uuid.uuid4().hex[:20]

    def embedding_dim(self, model: str | None) -> int | None:
        """Width of ``model``'s embedding vectors, when known (embeddings jobs only)."""
        return self.embedding_dims.get(model or "")

    def record(self, shard: int, attempt: int) -> ShardAttempt | None:
        """Return the record of ``(shard, attempt)``, if any."""
        for r in self.records:
            if r.shard == shard and r.attempt == attempt:
                return r
        return None

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form written to ``manifest.json`` (``format_version`` first)."""
        return {
            "format_version": self.format_version,
            "job_id": self.job_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "endpoint": self.endpoint,
            "fingerprint": self.fingerprint,
            "n_requests": self.n_requests,
            "limits": self.limits,
            "options": self.options,
            "json_schema": self.json_schema,
            "cancel_requested": self.cancel_requested,
            "embedding_dims": self.embedding_dims,
            "queue": self.queue,
            **({"lock_epoch": self.lock_epoch} if self.lock_epoch is not None else {}),
            "records": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Inverse of :meth:`to_dict`, upgrading older format versions."""
        version = data.get("format_version")
        if not isinstance(version, int):
            msg = "`manifest.json` has no `format_version`; it was not written by batchframe"
            raise JobError(msg)
        if version > FORMAT_VERSION:
            msg = (
                f"the manifest has format_version {version} but this batchframe reads up to "
                f"{FORMAT_VERSION}; upgrade batchframe to resume this job"
            )
            raise ManifestVersionError(msg)
        for upgrade in _MIGRATIONS[version - 1 :]:
            data = upgrade(data)
        return cls(
            job_id=data["job_id"],
            endpoint=data["endpoint"],
            fingerprint=data["fingerprint"],
            n_requests=int(data["n_requests"]),
            limits=dict(data["limits"]),
            options=dict(data["options"]),
            json_schema=data.get("json_schema"),
            records=[ShardAttempt.from_dict(r) for r in data.get("records", [])],
            cancel_requested=bool(data.get("cancel_requested", False)),
            embedding_dims={str(k): int(v) for k, v in (data.get("embedding_dims") or {}).items()},
            queue=dict(data.get("queue") or {}),
            created_at=float(data["created_at"]),
            updated_at=float(data.get("updated_at", data["created_at"])),
            format_version=FORMAT_VERSION,
            lock_epoch=None if data.get("lock_epoch") is None else int(data["lock_epoch"]),
        )

    def _content(self, data: dict[str, Any] | None = None) -> bytes:
        """The manifest's content without ``updated_at``, to tell whether a save changes it.

        ``data``: this manifest's :meth:`to_dict`, when the caller has it already.
        """
        data = self.to_dict() if data is None else data
        return orjson.dumps({k: v for k, v in data.items() if k != "updated_at"})

    def _skeleton(self) -> bytes:
        """What recovery cannot learn again by itself (see the module docstring)."""
        return orjson.dumps(
            [
                self.job_id,
                self.cancel_requested,
                [
                    (r.shard, r.attempt, r.submission, r.input_file_id, r.batch_id)
                    for r in self.records
                ],
                self._settled(),
            ]
        )

    def _remember(self, data: bytes, content: bytes | None = None) -> None:
        self._stored = self._content() if content is None else content
        self._stored_bytes = data
        self._stored_skeleton = self._skeleton()

    def save(self, storage: Storage, *, before_write: Callable[[], None] | None = None) -> None:
        """Write ``manifest.json`` atomically, unless it already holds this content.

        The write is skipped when the content (all but ``updated_at``) equals what this
        object last wrote or read, so a save that records nothing new costs no request.
        Before it is replaced, the current version is copied to ``manifest.prev.json``
        when recovery would need it (its skeleton differs from the copy already there),
        from memory: one more write, no read.

        Where the storage honours conditional writes (``storage.conditional_writes``),
        both files are written on condition that nobody else wrote them since this
        object did (``If-Match`` its ETag; ``If-None-Match: *`` for a manifest never
        written): the fence of :mod:`batchframe._fence` on object stores.

        ``before_write`` is called when there is something to write, before any write
        (the engine checks its lock there).

        Raises
        ------
        WriteConflict
            (Conditional writes only.) Another process wrote ``manifest.json`` or
            ``manifest.prev.json`` since this object last did: this one must stop.
        """
        plain = self.to_dict()  # once: a job of thousands of attempts makes it costly
        content = self._content(plain)
        if content == self._stored:
            return
        if before_write is not None:
            before_write()
        self.updated_at = plain["updated_at"] = _now()
        data = orjson.dumps(plain, option=orjson.OPT_INDENT_2)
        outgoing = self._stored_bytes
        if outgoing is not None and self._stored_skeleton != self._previous_skeleton:
            self._write_previous(storage, outgoing)
            self._previous_skeleton = self._stored_skeleton
        if storage.conditional_writes:
            self._etag = _write_if(storage, MANIFEST_FILE, data, self._etag)
        else:
            storage.write_bytes(MANIFEST_FILE, data)
        self._remember(data, content)
        if self._stored_skeleton != self._previous_skeleton and self._settled():
            # The job just settled: its final version is kept twice, so that readers of a
            # finished job never fall back to a version with rows still open.
            self._write_previous(storage, data)
            self._previous_skeleton = self._stored_skeleton

    def _write_previous(self, storage: Storage, data: bytes) -> None:
        if not storage.conditional_writes:
            storage.write_bytes(PREVIOUS_MANIFEST_FILE, data)
        elif self._prev_etag is None:
            # The first copy this object writes (it does not know the file's ETag): a
            # driver displaced meanwhile fails on its own next conditional write.
            self._prev_etag = storage.write_if(PREVIOUS_MANIFEST_FILE, data, ...)
        else:
            self._prev_etag = _write_if(storage, PREVIOUS_MANIFEST_FILE, data, self._prev_etag)

    def _settled(self) -> bool:
        return bool(self.records) and all(r.is_settled for r in self.records)

    @classmethod
    def exists(cls, storage: Storage) -> bool:
        """Whether a job lives at ``storage``: a manifest, or only its previous version."""
        return storage.is_file(MANIFEST_FILE) or storage.is_file(PREVIOUS_MANIFEST_FILE)

    @classmethod
    def _parse(cls, data: bytes) -> Manifest:
        parsed = orjson.loads(data)
        if not isinstance(parsed, dict):
            msg = f"it holds a JSON {type(parsed).__name__}, not an object"
            raise JobError(msg)
        manifest = cls.from_dict(parsed)
        if parsed.get("format_version") == FORMAT_VERSION:
            manifest._remember(data)  # an upgraded manifest is rewritten
        return manifest

    @classmethod
    def load(cls, storage: Storage, *, quiet: bool = False) -> Manifest:
        """Read ``manifest.json`` from ``storage``, or recover its previous version.

        When ``manifest.json`` is missing or cannot be read (truncated, not JSON, not a
        manifest) and ``manifest.prev.json`` can, the job is resumed from that, with a
        warning on the ``batchframe`` logger; its records that may have been submitted
        since are reconciled with the provider before anything is created (see the
        module docstring). The next save writes ``manifest.json`` whole again.
        ``quiet`` logs that at debug level (a first look before the same load is done
        again, as ``BatchJob.open`` does under the lock).

        Raises
        ------
        JobNotFoundError
            No manifest at the root.
        ManifestDamagedError
            ``manifest.json`` cannot be read and no readable previous version is left.
        ManifestVersionError
            The manifest was written by a newer batchframe.
        """
        raw, etag = _read_tagged_or_none(storage, MANIFEST_FILE)
        problem: str
        cause: BaseException | None = None
        if raw is None:
            problem = "is missing"
        else:
            try:
                loaded = cls._parse(raw)
                loaded._etag = etag
                return loaded
            except ManifestVersionError:
                raise
            except (ValueError, KeyError, TypeError, AttributeError, JobError) as exc:
                problem = f"cannot be read ({_describe(exc, raw)})"
                cause = exc
        previous = _read_or_none(storage, PREVIOUS_MANIFEST_FILE)
        if raw is None and previous is None:
            where = f"`{storage.root_url}`"
            if storage.is_regular_file(""):
                where += " (a regular file, not a directory)"
            msg = (
                f"no batchframe job at {where} (no {MANIFEST_FILE}); "
                "create one with `BatchJob.create(requests, root)` or `bf.run(...)`"
            )
            raise JobNotFoundError(msg)
        if previous is not None:
            try:
                manifest = cls._parse(previous)
            except ManifestVersionError:
                raise
            except (ValueError, KeyError, TypeError, AttributeError, JobError) as exc:
                problem += (
                    f", and its previous version `{storage.url(PREVIOUS_MANIFEST_FILE)}` "
                    f"cannot be read either ({_describe(exc, previous)})"
                )
                cause = exc
            else:
                manifest._recover(storage, problem, quiet=quiet)
                manifest._etag = etag  # the next save replaces what is there (or nothing)
                return manifest
        else:
            problem += f", and there is no previous version ({PREVIOUS_MANIFEST_FILE})"
        job = _salvage_job_id(raw or b"") or _salvage_job_id(previous or b"")
        tags = (
            f"the batches it created carry the metadata tag `batchframe_job={job}`"
            if job
            else "the batches it created carry a `batchframe_job` metadata tag"
        )
        msg = (
            f"the job manifest `{storage.url(MANIFEST_FILE)}` {problem}. Restore it from a "
            f"backup if you have one. Otherwise do not start the job again blindly: {tags}; "
            "check them at the provider (running ones keep running and are billed), cancel "
            "or download them, then rerun the rows that need it under a new root"
        )
        raise ManifestDamagedError(msg) from cause

    def _recover(self, storage: Storage, problem: str, *, quiet: bool = False) -> None:
        """Turn a version read from ``manifest.prev.json`` into one safe to resume from."""
        self._previous_skeleton = self._skeleton()  # that file holds exactly it
        self._stored = None  # the next save rewrites manifest.json, whatever it holds
        now = _now()
        suspects = []
        for r in self.records:
            # Its intent, and a batch, may be in the version that was lost: reconcile
            # it by its tags before anything is created (`submitting` means just that).
            if r.batch_id is None and r.status in ("uploaded", "submitting"):
                if r.status == "uploaded":
                    r.move("submitting")
                r.intent_at = now
                suspects.append(r.key)
        saved = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(self.updated_at))
        self.recovered = problem
        _log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "the job manifest %s %s; resuming job %s from its previous version %s (saved "
            "%s). At most one step is redone: batches created since are found again by "
            "their metadata tags before anything is submitted (%d shard attempt(s) to "
            "check)",
            storage.url(MANIFEST_FILE),
            problem,
            self.job_id,
            storage.url(PREVIOUS_MANIFEST_FILE),
            saved,
            len(suspects),
        )


def _write_if(storage: Storage, rel: str, data: bytes, etag: str | None) -> str | None:
    """``storage.write_if``; a file deleted since this holder wrote it is written again.

    A refused write is this holder's own when the file holds exactly ``data`` (a retry
    of a PUT that had landed); otherwise :class:`WriteConflict` propagates.

    Deleted by hand or by a tool, not by a driver taking the job over: a taker writes
    the manifest before anything else, so the file exists (with another ETag) and the
    write is refused. Re-creating it is conditioned on its absence.
    """
    from batchframe._storage import WriteConflict

    try:
        return storage.write_if(rel, data, etag)
    except FileNotFoundError:
        if etag is None:
            raise
        _log.warning("%s disappeared during the run; writing it again", storage.url(rel))
        return storage.write_if(rel, data, None)
    except WriteConflict:
        # A PUT whose answer was lost is sent again by the client, and then refused
        # because the first one landed: the object holds exactly these bytes (they
        # carry `updated_at`), so the write is this holder's own.
        try:
            now, tag = storage.read_tagged(rel)
        except Exception:
            now, tag = None, None
        if now == data:
            return tag
        raise


def _read_tagged_or_none(storage: Storage, rel: str) -> tuple[bytes | None, str | None]:
    try:
        return storage.read_tagged(rel)
    except (FileNotFoundError, NotADirectoryError):
        return None, None


def _read_or_none(storage: Storage, rel: str) -> bytes | None:
    try:
        return storage.read_bytes(rel)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _describe(exc: BaseException, raw: bytes) -> str:
    if not raw.strip():
        return "it is empty"
    if isinstance(exc, orjson.JSONDecodeError):
        return f"not valid JSON, {len(raw):,} bytes: {exc}"
    if isinstance(exc, KeyError):
        return f"the field {exc} is missing"
    return str(exc) or type(exc).__name__


def _salvage_job_id(raw: bytes) -> str | None:
    import re

    m = re.search(rb'"job_id"\s*:\s*"(bfj_[0-9a-f]+)"', raw)
    return m.group(1).decode() if m else None


# Numbered upgrades: _MIGRATIONS[i] turns format_version i + 1 into i + 2.
_MIGRATIONS: list[Any] = []


# -- metadata tags ------------------------------------------------------------------------
def batch_tags(b: RemoteBatch) -> tuple[int, int, int] | None:
    """Return ``(shard, attempt, submission)`` from a batch's metadata tags, if any."""
    try:
        return (
            int(b.metadata["batchframe_shard"]),
            int(b.metadata["batchframe_attempt"]),
            int(b.metadata.get("batchframe_submission", "0")),
        )
    except (KeyError, ValueError):
        return None


def find_tagged(found: list[RemoteBatch], r: ShardAttempt) -> RemoteBatch | None:
    """Return the batch in ``found`` tagged for ``r``'s shard, attempt and submission."""
    for b in found:
        if batch_tags(b) == (r.shard, r.attempt, r.submission):
            return b
    return None


# -- lock -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class LockInfo:
    """Who holds a job root: host name, process id, when, and a random token.

    ``proc_start`` (the process start time), ``boot_id`` and ``pid_ns`` (Linux: the
    boot and the pid namespace) tell whether ``pid`` can be checked from here at all,
    and whether the process running under it now is the holder: two containers may
    share a host name, and pids are reused.

    ``epoch`` is the fencing token: every taker writes a number above its predecessor's
    (and above the time in milliseconds), so a later holder always has the larger one.
    ``heartbeat`` is when the holder last renewed the lock (it does every
    ``LOCK_TTL / 4`` seconds while the job is open); a holder that cannot be checked
    from here and has not renewed for :data:`LOCK_TTL` seconds is taken over.
    """

    host: str
    pid: int
    started: float
    token: str
    proc_start: str | None = None
    boot_id: str | None = None
    pid_ns: str | None = None
    epoch: int = 0
    heartbeat: float | None = None

    def describe(self) -> str:
        """Human-readable holder, for error messages."""
        when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(self.started))
        return f"process {self.pid} on host `{self.host}` (holding it since {when})"

    def same_pid_space(self, other: LockInfo) -> bool:
        """Whether ``other``'s pid means the same process here (same host, boot, namespace)."""
        if self.host != other.host:
            return False
        return all(
            a is None or b is None or a == b
            for a, b in ((self.boot_id, other.boot_id), (self.pid_ns, other.pid_ns))
        )

    def is_stale(self, now: float | None = None) -> bool:
        """Whether the holder renews a heartbeat and has not for :data:`LOCK_TTL` seconds."""
        if self.heartbeat is None:
            return False  # written by a batchframe without heartbeats: never stale
        return (now if now is not None else _now()) - self.heartbeat > LOCK_TTL

    def payload(self, *, heartbeat: float | None = None) -> bytes:
        """The bytes of ``lock.json`` for this holder, with a fresh heartbeat."""
        data = asdict(self)
        data["heartbeat"] = heartbeat if heartbeat is not None else _now()
        return orjson.dumps(data)

    @classmethod
    def mine(cls, epoch: int = 0) -> LockInfo:
        """Return a new lock description for this process."""
        pid = os.getpid()
        now = _now()
        return cls(
            host=socket.gethostname(),
            pid=pid,
            started=now,
            token=uuid.uuid4().hex,
            proc_start=_proc_start(pid),
            boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
            pid_ns=_pid_namespace(),
            epoch=max(epoch, int(now * 1000)),
            heartbeat=now,
        )


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, ValueError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _proc_stat_field(pid: int, index: int) -> str | None:
    """Field ``index`` (0 = state) after ``comm`` in ``/proc/<pid>/stat`` (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses; fields after it are plain.
    rest = stat.rsplit(")", 1)[-1].split()
    return rest[index] if len(rest) > index else None


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid``, to tell a reused pid from the holder."""
    return _proc_stat_field(pid, 19)


def _proc_state(pid: int) -> str | None:
    return _proc_stat_field(pid, 0)


def _holder_alive(info: LockInfo, mine: LockInfo) -> bool | None:
    """True/False when it can be told (same pid space), None for a holder elsewhere."""
    if not info.same_pid_space(mine):
        return None
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    if _proc_state(info.pid) in {"Z", "X"}:
        return False  # killed, not yet reaped by its parent
    if info.proc_start is not None:
        now_start = _proc_start(info.pid)
        if now_start is not None and now_start != info.proc_start:
            return False  # the pid was reused by another process
    return True


def _read_lock(storage: Storage) -> LockInfo | None:
    try:
        data = orjson.loads(storage.read_bytes(LOCK_FILE))
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError:
        data = None
    try:
        return LockInfo(
            host=str(data["host"]),
            pid=int(data["pid"]),
            started=float(data.get("started", 0.0)),
            token=str(data.get("token", "")),
            proc_start=data.get("proc_start"),
            boot_id=data.get("boot_id"),
            pid_ns=data.get("pid_ns"),
            epoch=int(data.get("epoch") or 0),
            heartbeat=None if data.get("heartbeat") is None else float(data["heartbeat"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return LockInfo(host="?", pid=-1, started=0.0, token=str(data)[:100])


def acquire_lock(storage: Storage, *, break_lock: bool = False) -> LockInfo:
    """Take the lock of the job at ``storage``.

    The lock is free when ``lock.json`` is absent. It is taken over, with a warning
    on the ``batchframe`` logger, when its holder is this same process (an earlier
    ``BatchJob`` object, e.g. a re-run notebook cell) or a process on this host that
    is gone (its pid is dead, a zombie, or now belongs to a process with another start
    time): that is what lets a job resume after a crash or a kill. A holder that cannot
    be checked from here (another host, another container's pid namespace, or before a
    reboot) is taken over when its heartbeat is older than :data:`LOCK_TTL` seconds,
    and otherwise only with ``break_lock=True``; a live holder on this host only with
    ``break_lock=True`` too.

    The new lock's ``epoch`` (fencing token) is above the previous holder's. A holder
    that was taken over notices it before its next batch creation or manifest save
    (:func:`check_lock`) and stops.

    Raises
    ------
    JobLockedError
        Another process holds the lock; the message names it and says what to do.
    """
    previous = 0
    for _ in range(5):
        mine = LockInfo.mine(previous + 1)
        if storage.create_exclusive(LOCK_FILE, mine.payload(heartbeat=mine.heartbeat)):
            held = _read_lock(storage)
            if held is not None and held.token == mine.token:
                return mine
            continue  # lost a race on a filesystem without exclusive create
        holder = _read_lock(storage)
        if holder is None:
            continue  # released meanwhile
        previous = max(previous, holder.epoch)
        same_process = holder.pid == mine.pid and holder.same_pid_space(mine)
        alive = None if same_process else _holder_alive(holder, mine)
        stale = alive is None and holder.pid >= 0 and holder.is_stale()
        if not (same_process or alive is False or stale or break_lock):
            if holder.pid < 0:
                msg = (
                    f"the job at `{storage.root_url}` has an unreadable `{LOCK_FILE}` (a "
                    "crash while it was written?); if no process drives the job, pass "
                    "`break_lock=True` to take it over"
                )
            elif alive is None:
                msg = (
                    f"the job at `{storage.root_url}` is locked by {holder.describe()}, "
                    "which cannot be checked from here (another host, container or boot); "
                    "if that process is gone, pass `break_lock=True` to take the job over"
                )
                if holder.heartbeat is not None:
                    msg += (
                        f" (or wait: its heartbeat is {_now() - holder.heartbeat:.0f} s old, "
                        f"and a lock not renewed for {LOCK_TTL:.0f} s is taken over)"
                    )
            else:
                msg = (
                    f"the job at `{storage.root_url}` is being driven by {holder.describe()}; "
                    "wait for it to finish or stop it, then open the job again (or pass "
                    "`break_lock=True` if you are sure it no longer drives this job)"
                )
            raise JobLockedError(msg)
        if not same_process:
            if alive is False:
                why = "which is no longer running"
            elif stale:
                assert holder.heartbeat is not None
                why = (
                    f"whose heartbeat is {_now() - holder.heartbeat:.0f} s old "
                    f"(more than {LOCK_TTL:.0f} s)"
                )
            else:
                why = "because `break_lock=True` was passed"
            _log.warning(
                "taking over the lock of the job at %s from %s, %s",
                storage.root_url,
                holder.describe(),
                why,
            )
        # Remove the stale lock only if it is still the one just judged, then race for
        # a fresh exclusive create like any other taker.
        again = _read_lock(storage)
        if again is not None and again.token == holder.token:
            storage.delete(LOCK_FILE)
    msg = f"could not take the lock of the job at `{storage.root_url}`; try again"
    raise JobLockedError(msg)


def check_lock(storage: Storage, info: LockInfo) -> None:
    """Make sure ``info`` still holds the lock (the fence before a create or a save).

    A lock file found missing (deleted by hand, or lost) is taken back by an exclusive
    create, so that no other process can take it meanwhile.

    Raises
    ------
    JobLockedError
        Another process took the job over; this one must not create a batch or save
        the manifest any more.
    """
    held = _read_lock(storage)
    if held is None and storage.create_exclusive(LOCK_FILE, info.payload()):
        _log.warning(
            "the lock file of the job at %s had disappeared; taken back by this process",
            storage.root_url,
        )
        held = _read_lock(storage)
    if held is not None and held.token == info.token:
        return
    raise JobLockedError(displaced_message(storage, info, held))


def displaced_message(storage: Storage, info: LockInfo, held: LockInfo | None) -> str:
    """What a holder ``info`` displaced by ``held`` (``None``: unknown) is told."""
    other = "an unknown process" if held is None else held.describe()
    epoch = "" if held is None else f" (lock epoch {held.epoch} > ours, {info.epoch})"
    return (
        f"the job at `{storage.root_url}` was taken over by {other}{epoch}; this process "
        "stopped before creating another batch or saving the manifest. Let the new holder "
        "drive the job (or open it again here once that one is gone)"
    )


def read_lock(storage: Storage) -> LockInfo | None:
    """The holder ``lock.json`` names now (``None``: no lock file)."""
    return _read_lock(storage)


def renew_lock(storage: Storage, info: LockInfo) -> bool:
    """Refresh the heartbeat of ``info``'s lock; ``False`` when it is not ours any more."""
    held = _read_lock(storage)
    if held is None or held.token != info.token:
        return False
    storage.write_bytes(LOCK_FILE, info.payload())
    return True


def release_lock(storage: Storage, info: LockInfo) -> None:
    """Remove the lock if it is still ``info``'s (someone may have broken it)."""
    try:
        held = _read_lock(storage)
        if held is not None and held.token == info.token:
            storage.delete(LOCK_FILE)
    except Exception:  # releasing is best effort (interpreter exit, storage gone)
        _log.debug("could not release the lock at %s", storage.root_url, exc_info=True)


class RowCounts(NamedTuple):
    """Rows settled so far: ``ok``, finally ``failed``, and ``retried`` (resubmitted)."""

    ok: int
    failed: int
    retried: int


def row_counts(records: Iterable[ShardAttempt]) -> RowCounts:
    """Count rows over shard attempts; unsettled attempts count their completed lines."""
    ok = failed = retried = 0
    for r in records:
        if r.is_settled:
            ok += r.n_ok or 0
            failed += r.n_final_failed or 0
            retried += r.n_retried or 0
        else:
            ok += r.completed
    return RowCounts(ok, failed, retried)
