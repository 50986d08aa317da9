"""The fence around a job's outside actions: the lock's heartbeat and holder checks.

A job root has one driver at a time (``lock.json``, see :mod:`batchframe._manifest`).
A second driver can still take the root over while the first is alive (``break_lock``,
a deleted lock file, a heartbeat that stopped for longer than ``LOCK_TTL``). The first
must then stop before it does anything that could pay twice or undo the second's work,
so :class:`Fence` re-reads the lock immediately before every ``batches.create`` and
every manifest save, and raises :class:`~batchframe.exceptions.JobLockedError` once
the lock is no longer its own. A daemon thread renews the heartbeat meanwhile.

Object stores that honour conditional writes (S3 and the stores that speak its API)
fence without reading the lock: every write of ``manifest.json`` (and of
``manifest.prev.json``) is conditioned on the ETag of the version this driver last
wrote (``If-Match``), and a driver that takes a job over writes the manifest, with its
lock epoch, before anything else (:meth:`batchframe._engine.JobEngine._claim`). From
then on every write of the driver it displaced fails, and it stops with
``JobLockedError``. A batch is only ever created right after its intent was saved
(the write-ahead rule of :mod:`batchframe._engine`), so the displaced driver can create
at most the one batch whose intent it saved before the takeover; the new holder read
that intent (its claim was conditioned on the version that holds it) and reconciles it
by metadata tags, exactly as when the lock was read before the create (that read, too,
could not stop a create already under way). Whether the store honours the conditions
is probed once per job object (:meth:`~batchframe._storage.Storage.probe_conditional`,
one request); where it does not (local disks, ``memory://``, stores that ignore the
headers) the lock is read before each create and save as above.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from batchframe._manifest import (
    LOCK_TTL,
    LockInfo,
    check_lock,
    displaced_message,
    read_lock,
    release_lock,
    renew_lock,
)
from batchframe._storage import WriteConflict
from batchframe.exceptions import JobExistsError, JobLockedError

if TYPE_CHECKING:
    from batchframe._manifest import Manifest
    from batchframe._storage import Storage

__all__ = ["Fence"]

_log = logging.getLogger("batchframe")


class Fence:
    """The lock a job holds: checked before outside actions, renewed in the background.

    Parameters
    ----------
    storage
        The job root.
    lock
        What :func:`~batchframe._manifest.acquire_lock` returned.
    heartbeat
        Seconds between heartbeat renewals (default ``LOCK_TTL / 4``); ``None`` for
        no renewal thread.
    """

    def __init__(self, storage: Storage, lock: LockInfo, *, heartbeat: float | None = -1.0):
        self.storage = storage
        self.lock = lock
        self._lost: JobLockedError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Whether manifest writes are conditional here (then they are the fence).
        self.conditional = storage.conditional_writes or (
            storage.direct_writes and storage.probe_conditional()
        )
        interval = LOCK_TTL / 4 if heartbeat == -1.0 else heartbeat
        if interval is not None:
            self._thread = threading.Thread(
                target=self._beat, args=(interval,), name="batchframe-heartbeat", daemon=True
            )
            self._thread.start()

    @property
    def epoch(self) -> int:
        """The fencing token of this holder."""
        return self.lock.epoch

    def check(self, *, read: bool = False) -> None:
        """Raise :class:`JobLockedError` when another process holds the lock now.

        Once displaced, always displaced: a later check raises again without reading.
        Where writes are conditional (:attr:`conditional`) the lock is read only when
        ``read`` is true: the conditional manifest write that follows is the check.
        """
        if self._lost is not None:
            raise JobLockedError(str(self._lost))
        if self.conditional and not read:
            return
        try:
            check_lock(self.storage, self.lock)
        except JobLockedError as exc:
            self._lost = exc
            self._stop.set()
            _log.error("%s", exc)
            raise

    def lost(self, cause: BaseException) -> JobLockedError:
        """The error to raise when a conditional manifest write was refused (``cause``).

        The lock is read once, to name the new holder; once lost, always lost.
        """
        if self._lost is None:
            try:
                held = read_lock(self.storage)
            except Exception:  # the message is the best it can be without it
                held = None
            if held is not None and held.token != self.lock.token:
                self._lost = JobLockedError(displaced_message(self.storage, self.lock, held))
            else:
                self._lost = JobLockedError(
                    f"the manifest of the job at `{self.storage.root_url}` was written by "
                    "another process although this one held the lock; this process "
                    "stopped before creating another batch or saving the manifest. Open "
                    "the job again once no other process drives it"
                )
            self._stop.set()
            _log.error("%s", self._lost)
        err = JobLockedError(str(self._lost))
        err.__cause__ = cause
        return err

    def save_new(self, manifest: Manifest) -> None:
        """Save a new job's first manifest, under this lock.

        The lock is read first (the writes of a whole create lie behind), and where
        writes are conditional the manifest is written only if none exists
        (``If-None-Match: *``), carrying this holder's epoch.

        Raises
        ------
        JobLockedError
            Another process took the lock over meanwhile.
        JobExistsError
            A job was created at the root meanwhile.
        """
        self.check(read=True)
        if self.conditional:
            manifest.lock_epoch = self.epoch
        try:
            manifest.save(self.storage)
        except WriteConflict as exc:
            msg = f"a job was created at `{self.storage.root_url}` meanwhile; open it instead"
            raise JobExistsError(msg) from exc

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if not renew_lock(self.storage, self.lock):
                    _log.warning(
                        "the lock of the job at %s is no longer held by this process; "
                        "it will stop before its next batch creation or manifest save",
                        self.storage.root_url,
                    )
                    return
            except Exception:  # storage hiccup: try again at the next beat
                _log.debug("could not renew the lock heartbeat", exc_info=True)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours. Idempotent."""
        self._stop.set()
        release_lock(self.storage, self.lock)
