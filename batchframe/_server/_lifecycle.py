"""Background life of a batch: validating -> in_progress -> finalizing -> completed.

Each live batch has one daemon thread. It waits ``validation_seconds``, validates the
input file (``failed`` with ``errors.data`` on problems, or ``token_limit_exceeded`` when
the model's enqueued tokens would pass ``queue_token_limit``), then runs the lines in a
shuffled (seeded) order, so output order is arbitrary but reproducible. Results are
streamed to work files; successes go to the output file, HTTP failures and
``batch_cancelled`` / ``batch_expired`` / ``request_timeout`` lines to the error file.
Cancel ends in ``cancelled`` and expiry (``completion_window_seconds`` after creation)
in ``expired``, both keeping finished lines. A server that stops mid-run leaves the
batch in its status; a restarted server (same ``state_dir``) runs it again from the start.
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from batchframe._server._batch_object import add_usage, zero_usage
from batchframe._server._body_checks import check_body
from batchframe._server._echo import Executor
from batchframe._server._errors import (
    BATCH_CANCELLED_MESSAGE,
    BATCH_EXPIRED_MESSAGE,
    SERVER_ERROR_MESSAGE,
    ApiError,
    LineError,
    error_body,
)
from batchframe._server._forward import Forwarder
from batchframe._server._provider import v1_endpoint
from batchframe._server._store import BatchRecord, Store
from batchframe._server._validate import FileLimits, ValidFile, validate_input_file

log = logging.getLogger("batchframe.server")

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
CANCELLABLE = frozenset({"validating", "in_progress", "finalizing"})


@dataclass(frozen=True)
class RunConfig:
    """How batches run (see ``LocalBatchServer`` for each knob)."""

    executor: Executor
    concurrency: int = 1
    requests_per_second: float | None = None
    failure_rate: float = 0.0
    completion_window_seconds: float = 86_400.0
    queue_token_limit: int | Mapping[str, int] | None = None
    validation_seconds: float = 0.0
    seed: int = 0
    limits: FileLimits = field(default_factory=FileLimits)


class _Stopped(Exception):
    """The server is closing: leave the batch as it is."""


class Lifecycle:
    """Runs every live batch of a :class:`Store` in background threads."""

    def __init__(self, store: Store, config: RunConfig) -> None:
        self._store = store
        self._cfg = config
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._wake: dict[str, threading.Event] = {}
        self._enqueued: dict[str, int] = defaultdict(int)
        self._attempts: dict[str, int] = defaultdict(int)
        self._next_slot = 0.0

    # -- control -------------------------------------------------------------------------

    def start(self, batch_id: str) -> None:
        """Run a batch in the background."""
        with self._lock:
            if self._stop.is_set() or batch_id in self._threads:
                return
            self._wake[batch_id] = threading.Event()
            thread = threading.Thread(
                target=self._run_safe, args=(batch_id,), name=f"bf-{batch_id}", daemon=True
            )
            self._threads[batch_id] = thread
        thread.start()

    def resume(self) -> None:
        """Start every batch that is not terminal (after a restart)."""
        with self._store.lock:
            live = [
                bid for bid, r in self._store.batches.items() if r.batch["status"] not in TERMINAL
            ]
        for batch_id in live:
            self.start(batch_id)

    def cancel(self, batch_id: str) -> None:
        """Move a batch to ``cancelling`` (idempotent); raise 409 when it already ended."""
        store = self._store
        with store.lock:
            record = store.batches[batch_id]
            status = record.batch["status"]
            if status in ("cancelling", "cancelled"):
                return
            if status not in CANCELLABLE:
                # Observed (not documented): the API answers 409 for an ended batch.
                msg = f"Cannot cancel a batch with status '{status}'."
                raise ApiError(409, msg)
            store.update(batch_id, status="cancelling", cancelling_at=int(time.time()))
        with self._lock:
            wake = self._wake.get(batch_id)
        if wake is not None:
            wake.set()
        else:
            self.start(batch_id)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every batch thread (batches keep their status) and wait for them."""
        self._stop.set()
        with self._lock:
            wakes = list(self._wake.values())
            threads = list(self._threads.values())
        for wake in wakes:
            wake.set()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no batch is running; return False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._threads.values())
            if not threads:
                return True
            for thread in threads:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(remaining)
                if thread.is_alive():
                    return False

    def enqueued_tokens(self) -> dict[str, int]:
        """Estimated input tokens of running batches, per model."""
        with self._lock:
            return {k: v for k, v in self._enqueued.items() if v}

    # -- running -------------------------------------------------------------------------

    def _run_safe(self, batch_id: str) -> None:
        try:
            self._run(batch_id)
        except _Stopped:
            pass
        except Exception as exc:  # a bug or a broken executor: fail the batch, keep serving
            log.exception("batch %s crashed", batch_id)
            error = {
                "code": "server_error",
                "message": f"Internal error: {exc!r}",
                "param": None,
                "line": None,
            }
            self._fail(batch_id, [error])
        finally:
            with self._lock:
                self._threads.pop(batch_id, None)
                self._wake.pop(batch_id, None)

    def _status(self, record: BatchRecord) -> str:
        with self._store.lock:
            status: str = record.batch["status"]
            return status

    def _run(self, batch_id: str) -> None:
        store, cfg = self._store, self._cfg
        record = store.record(batch_id)
        if record is None:
            return
        wake = self._wake[batch_id]
        window = record.extra.get("window_seconds", cfg.completion_window_seconds)
        deadline = record.created + (float("inf") if window is None else float(window))
        due = record.created + cfg.validation_seconds
        while self._status(record) == "validating" and time.time() < min(due, deadline):
            if self._stop.is_set():
                return
            wake.wait(min(due, deadline) - time.time())
        if self._stop.is_set():
            return
        status = self._status(record)
        if status == "cancelling" and record.batch["in_progress_at"] is None:
            self._end(batch_id, "cancelled")
            return
        if time.time() >= deadline and status == "validating":
            self._end(batch_id, "expired")
            return
        content = store.read_content(record.batch["input_file_id"])
        if content is None:
            message = f"The input file {record.batch['input_file_id']} no longer exists."
            self._fail(
                batch_id,
                [{"code": "invalid_file", "message": message, "param": None, "line": None}],
            )
            return
        valid = validate_input_file(
            content,
            record.batch["endpoint"],
            cfg.limits,
            count_tokens=cfg.queue_token_limit is not None,
        )
        if not isinstance(valid, ValidFile):
            self._fail(batch_id, valid)
            return
        order = list(range(len(valid.lines)))
        random.Random(f"{cfg.seed}:{zlib.crc32(content)}:{len(order)}").shuffle(order)
        del content
        model = valid.model or ""
        if not self._enqueue(batch_id, model, valid.tokens):
            return
        try:
            with store.lock:
                if record.batch["in_progress_at"] is None:
                    record.batch["in_progress_at"] = int(time.time())
                if record.batch["status"] == "validating":
                    record.batch["status"] = "in_progress"
                record.batch["model"] = model
                record.batch["request_counts"] = {"total": len(order), "completed": 0, "failed": 0}
                record.batch["usage"] = zero_usage()
                store.save_batch(batch_id)
            self._execute(record, valid, order, deadline, wake)
        finally:
            with self._lock:
                self._enqueued[model] -= valid.tokens

    def _enqueue(self, batch_id: str, model: str, tokens: int) -> bool:
        limit = self._cfg.queue_token_limit
        if isinstance(limit, Mapping):
            limit = limit.get(model)
        with self._lock:
            if limit is None or self._enqueued[model] + tokens <= limit:
                self._enqueued[model] += tokens
                return True
        message = (
            f"Enqueued token limit reached for {model} in organization org-local. Limit: {limit:,} "
            "enqueued tokens. Please try again once some in_progress batches have been completed."
        )
        self._fail(
            batch_id,
            [{"code": "token_limit_exceeded", "message": message, "param": None, "line": None}],
        )
        return False

    def _fail(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        self._store.update(
            batch_id,
            status="failed",
            failed_at=int(time.time()),
            errors={"object": "list", "data": errors},
        )

    def _end(self, batch_id: str, status: str) -> None:
        """End a batch that never ran (cancelled or expired while validating)."""
        self._store.update(batch_id, status=status, **{f"{status}_at": int(time.time())})

    def _injected_failure(self, custom_id: str) -> bool:
        rate = self._cfg.failure_rate
        if rate <= 0:
            return False
        with self._lock:
            attempt = self._attempts[custom_id]
            self._attempts[custom_id] = attempt + 1
        key = f"{self._cfg.seed}\x00{custom_id}\x00{attempt}".encode()
        draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
        return draw < rate

    def _pace(self, wake: threading.Event) -> None:
        rps = self._cfg.requests_per_second
        if not rps:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / rps
        if slot > now:
            wake.wait(slot - now)

    def _answer(self, endpoint: str, custom_id: str, body: Any) -> tuple[int, Any]:
        # The endpoint's own request validation comes first, whatever the executor
        # (a model server behind "forward" may take parameters OpenAI does not know).
        strict = not isinstance(self._cfg.executor, Forwarder)
        refused = check_body(endpoint, body, strict_keys=strict)
        if refused is not None:
            return refused.status, refused.body()
        if self._injected_failure(custom_id):
            return 500, error_body(SERVER_ERROR_MESSAGE, type="server_error")
        try:
            return self._cfg.executor(endpoint, body)
        except LineError:
            raise
        except Exception as exc:  # a user executor that raised: the API's 500 answer
            return 500, error_body(f"The model server failed: {exc!r}", type="server_error")

    def _execute(
        self,
        record: BatchRecord,
        valid: ValidFile,
        order: list[int],
        deadline: float,
        wake: threading.Event,
    ) -> None:
        store = self._store
        batch = record.batch
        batch_id, endpoint = batch["id"], v1_endpoint(batch["endpoint"])
        out_path = store.work_path(f"{batch_id}.output.jsonl")
        err_path = store.work_path(f"{batch_id}.error.jsonl")
        ran = bytearray(len(order))
        write_lock = threading.Lock()
        halt: list[str] = []

        def should_halt() -> bool:
            if self._stop.is_set():
                halt.append("stop")
            elif self._status(record) == "cancelling":
                halt.append("cancelled")
            elif time.time() >= deadline:
                halt.append("expired")
            return bool(halt)

        def run_line(index: int, out: IO[bytes], err: IO[bytes]) -> None:
            ran[index] = 1
            obj = orjson.loads(valid.lines[index])
            custom_id = obj["custom_id"]
            line: dict[str, Any] = {
                "id": "batch_req_" + secrets.token_hex(12),
                "custom_id": custom_id,
            }
            try:
                status, body = self._answer(endpoint, custom_id, obj["body"])
                line["response"] = {
                    "status_code": status,
                    "request_id": "req_" + secrets.token_hex(12),
                    "body": body,
                }
                line["error"] = None
            except LineError as exc:
                status, body = 0, None
                line["response"] = None
                line["error"] = {"code": exc.code, "message": exc.message}
            data = orjson.dumps(line) + b"\n"
            ok = 200 <= status < 300
            with write_lock:
                (out if ok else err).write(data)
            with store.lock:
                batch["request_counts"]["completed" if ok else "failed"] += 1
                if ok:
                    add_usage(batch["usage"], body)

        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            if self._cfg.concurrency <= 1:
                for index in order:
                    if should_halt():
                        break
                    self._pace(wake)
                    if should_halt():
                        break
                    run_line(index, out, err)
            else:
                self._run_pool(order, lambda i: run_line(i, out, err), should_halt, wake)
            reason = halt[0] if halt else None
            if reason == "stop":
                out.close()
                err.close()
                out_path.unlink(missing_ok=True)
                err_path.unlink(missing_ok=True)
                raise _Stopped
            if reason in ("cancelled", "expired"):
                code = "batch_cancelled" if reason == "cancelled" else "batch_expired"
                message = (
                    BATCH_CANCELLED_MESSAGE if reason == "cancelled" else BATCH_EXPIRED_MESSAGE
                )
                skipped = 0
                for index in order:
                    if not ran[index]:
                        custom_id = orjson.loads(valid.lines[index])["custom_id"]
                        line = {"id": "batch_req_" + secrets.token_hex(12), "custom_id": custom_id}
                        line |= {"response": None, "error": {"code": code, "message": message}}
                        err.write(orjson.dumps(line) + b"\n")
                        skipped += 1
                with store.lock:
                    batch["request_counts"]["failed"] += skipped
        self._finish(record, reason, out_path, err_path)

    def _run_pool(
        self, order: list[int], run: Any, should_halt: Any, wake: threading.Event
    ) -> None:
        items = iter(order)
        take = threading.Lock()
        crashed: list[BaseException] = []

        def worker() -> None:
            try:
                while not crashed and not should_halt():
                    with take:
                        index = next(items, None)
                    if index is None:
                        return
                    self._pace(wake)
                    run(index)
            except BaseException as exc:  # re-raised in the batch thread
                crashed.append(exc)

        workers = [
            threading.Thread(target=worker, daemon=True, name="bf-line")
            for _ in range(min(self._cfg.concurrency, len(order)))
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        if crashed:
            raise crashed[0]

    def _finish(
        self, record: BatchRecord, reason: str | None, out_path: Path, err_path: Path
    ) -> None:
        store = self._store
        batch = record.batch
        batch_id = batch["id"]
        if reason is None:
            store.update(batch_id, status="finalizing", finalizing_at=int(time.time()))
        expires = record.output_expires_seconds

        def adopt(path: Path, kind: str) -> str | None:
            if path.stat().st_size == 0:
                path.unlink()
                return None
            expires_at = None if expires is None else int(time.time()) + expires
            meta = store.adopt_file(
                path,
                filename=f"{batch_id}_{kind}.jsonl",
                purpose="batch_output",
                expires_at=expires_at,
            )
            file_id: str = meta["id"]
            return file_id

        output_id = adopt(out_path, "output")
        error_id = adopt(err_path, "error")
        with store.lock:
            if reason is None and batch["status"] == "cancelling":
                reason = "cancelled"  # cancel arrived after the last line ran
            final = {None: "completed", "cancelled": "cancelled", "expired": "expired"}[reason]
            store.update(
                batch_id,
                status=final,
                output_file_id=output_id,
                error_file_id=error_id,
                **{f"{final}_at": int(time.time())},
            )
