"""Storage of shards, manifests and downloaded results on any fsspec URL.

This is the only module that imports ``fsspec``. Every write is atomic from a reader's
point of view: a file appears whole or not at all.

* On object stores (S3, GCS, Azure Blob, ...) an object is written directly under its
  name: a single PUT, or a multipart upload completed at close, is atomic there, and an
  upload that fails or is interrupted leaves no object (an error inside
  :meth:`Storage.open_write` aborts the upload). A temporary name plus a move would cost
  a server-side copy and three more requests per file.
* Elsewhere (local disks, ``memory://``, SFTP, ...) bytes go to a temporary name beside
  the target and are moved into place (a crash leaves at most a stray ``.tmp-*`` file).
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

#: Protocols of object stores, where one PUT (or a completed multipart upload) makes an
#: object appear whole and an aborted upload leaves nothing: objects are written directly.
OBJECT_STORE_PROTOCOLS = frozenset(
    {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oss", "r2", "tos", "cos"}
)


class Storage:
    """A directory on any fsspec filesystem, addressed by relative paths.

    Parameters
    ----------
    root
        A local path or fsspec URL (``memory://...``, ``s3://bucket/prefix``, ...).
    storage_options
        Passed to the fsspec filesystem (credentials, endpoint URL, ...).
    """

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        from fsspec.core import url_to_fs

        self.root_url = str(root).rstrip("/") or str(root)
        self.storage_options = dict(storage_options or {})
        fs, path = url_to_fs(self.root_url, **self.storage_options)
        self.fs: AbstractFileSystem = fs
        self.root: str = path.rstrip("/") or path
        self._is_local = "file" in _protocols(fs)
        #: Whether objects are written directly under their names (object stores).
        self.direct_writes: bool = bool(_protocols(fs) & OBJECT_STORE_PROTOCOLS)
        self._root_made = False
        #: S3: sizes of the objects this Storage wrote (by path), so that :meth:`size`
        #: sends no HEAD request for them. (Reads still send one: s3fs reads with the
        #: object's ETag, so that a read never mixes two versions.)
        self._sizes: dict[str, int] = {}
        self._known_sizes = bool(_protocols(fs) & {"s3", "s3a"})

    # -- paths ---------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` under the root."""
        return posixpath.join(self.root, rel) if rel else self.root

    def url(self, rel: str) -> str:
        """A URL for ``rel`` that the same fsspec filesystem understands."""
        return self.path(rel) if self._is_local else self.fs.unstrip_protocol(self.path(rel))

    # -- reads ---------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists."""
        return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        """The whole content of ``rel``."""
        data: bytes = self.fs.cat_file(self.path(rel))
        return data

    @contextmanager
    def open_read(self, rel: str) -> Iterator[IO[bytes]]:
        """Open ``rel`` for streaming reads."""
        with self.fs.open(self.path(rel), "rb") as f:
            yield f

    def list(self, rel: str) -> list[str]:
        """Relative paths of the files directly under directory ``rel`` (sorted)."""
        base = self.path(rel)
        if not self.fs.exists(base):
            return []
        out = []
        for p in self.fs.ls(base, detail=False):
            name = posixpath.basename(str(p).rstrip("/"))
            if name.startswith(".tmp-"):
                continue
            out.append(posixpath.join(rel, name) if rel else name)
        return sorted(out)

    def size(self, rel: str) -> int:
        """Size of ``rel`` in bytes."""
        path = self.path(rel)
        if path in self._sizes:
            return self._sizes[path]
        return int(self.fs.size(path))

    # -- writes --------------------------------------------------------------------------
    def makedirs(self, rel: str) -> None:
        """Create directory ``rel`` (and parents).

        On object stores there are no directories: only the bucket is made, if missing,
        once per :class:`Storage` (as fsspec's ``makedirs`` does).
        """
        if self.direct_writes:
            self._make_root()
            return
        self.fs.makedirs(self.path(rel), exist_ok=True)

    def _make_root(self) -> None:
        if not self._root_made:
            self.fs.makedirs(self.root, exist_ok=True)
            self._root_made = True

    def write_bytes(self, rel: str, data: bytes | bytearray | memoryview) -> None:
        """Atomically write ``data`` to ``rel``.

        One PUT on object stores; a temporary file and a move elsewhere.
        """
        if self.direct_writes:
            self._make_root()
            self.fs.pipe_file(self.path(rel), bytes(data))
            if self._known_sizes:
                self._sizes[self.path(rel)] = len(data)
            return
        with self.open_write(rel) as f:
            f.write(data)

    @contextmanager
    def open_write(self, rel: str) -> Iterator[IO[bytes]]:
        """Open ``rel`` for writing; it appears under its name only if the block succeeds.

        On object stores the object is uploaded directly (one PUT, or a multipart upload
        for large files) and an exception inside the block aborts the upload, so nothing
        appears and an existing object is left as it was. Elsewhere the bytes go to a
        temporary name that is moved into place when the block succeeds.
        """
        target = self.path(rel)
        if self.direct_writes:
            self._make_root()
            with self._open_direct(target) as f:
                yield f
            return
        parent = posixpath.dirname(target)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(target)}")
        try:
            with self.fs.open(tmp, "wb") as f:
                yield f
            self.fs.mv(tmp, target)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise

    @contextmanager
    def _open_direct(self, target: str) -> Iterator[IO[bytes]]:
        # Not ``with fs.open(...)``: its ``__exit__`` (and ``__del__``) would close the
        # file, that is complete the upload, even when the block raised.
        self._sizes.pop(target, None)
        f = self.fs.open(target, "wb")
        try:
            yield f
        except BaseException:
            _abandon(f)
            raise
        size = f.tell()
        f.close()
        if self._known_sizes:
            self._sizes[target] = size

    def delete(self, rel: str) -> None:
        """Delete ``rel`` if it exists."""
        p = self.path(rel)
        self._sizes.pop(p, None)
        if self.direct_writes:
            with suppress(FileNotFoundError):  # one DELETE; a missing key is fine
                self.fs.rm_file(p)
            return
        if self.fs.exists(p):
            self.fs.rm(p)

    # -- added for the job lock (owned by the job module) ----------------------------------
    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``data`` to ``rel`` only if ``rel`` does not exist; return whether it did.

        Local files use ``O_CREAT | O_EXCL``; other filesystems use mode ``"xb"`` where
        the implementation supports it (s3fs sends ``If-None-Match: *``), else a
        check-then-write that the caller must confirm by reading the file back.
        """
        target = self.path(rel)
        parent = posixpath.dirname(target)
        if self.direct_writes:
            self._make_root()
        elif parent:
            self.fs.makedirs(parent, exist_ok=True)
        if self._is_local:
            import os

            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        try:
            with self.fs.open(target, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            pass
        if self.fs.exists(target):
            return False
        self.write_bytes(rel, data)
        return True


def _abandon(f: IO[bytes]) -> None:
    """Drop an unfinished direct upload: abort it, and never let it complete on close."""
    discard = getattr(f, "discard", None)
    try:
        if callable(discard):
            discard()  # s3fs: abort the multipart upload, if one was started
    finally:
        # fsspec files upload what they hold when closed (also when garbage collected):
        # mark the file closed without closing it.
        with suppress(AttributeError):  # pragma: no cover - not an fsspec buffered file
            f.closed = True  # type: ignore[misc]


def _protocols(fs: AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)
