"""The fence around a job's outside actions: the lock's heartbeat and holder checks.

A job root has one driver at a time (``lock.json``, see :mod:`batchframe._manifest`).
A second driver can still take the root over while the first is alive (``break_lock``,
a deleted lock file, a heartbeat that stopped for longer than ``LOCK_TTL``). The first
must then stop before it does anything that could pay twice or undo the second's work,
so :class:`Fence` re-reads the lock immediately before every ``batches.create`` and
every manifest save, and raises :class:`~batchframe.exceptions.JobLockedError` once
the lock is no longer its own. A daemon thread renews the heartbeat meanwhile.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from batchframe._manifest import LOCK_TTL, LockInfo, check_lock, release_lock, renew_lock
from batchframe.exceptions import JobLockedError

if TYPE_CHECKING:
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

    def check(self) -> None:
        """Raise :class:`JobLockedError` when another process holds the lock now.

        Once displaced, always displaced: a later check raises again without reading.
        """
        if self._lost is not None:
            raise JobLockedError(str(self._lost))
        try:
            check_lock(self.storage, self.lock)
        except JobLockedError as exc:
            self._lost = exc
            self._stop.set()
            _log.error("%s", exc)
            raise

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
