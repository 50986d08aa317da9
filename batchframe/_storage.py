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

On S3 the job's Storage also saves requests: it opens files it wrote with their known
size (s3fs would send a HEAD first), lists a folder with one LIST, and offers writes
conditioned on an object's ETag or absence (:meth:`Storage.write_if`), which the job's
fence uses where the store honours them (:meth:`Storage.probe_conditional`).

Temporary names carry their writer: ``.tmp-<host>.<pid>-<uuid>-<name>``, where ``<host>``
is a digest of the host name, boot and pid namespace. :meth:`Storage.remove_stale_temps`
removes the ones a crash left behind: those of a process of this host that is gone, and
any other (another host's, or named before writers were recorded) once it has not been
modified for :data:`STALE_TEMP_SECONDS`. A file another live process is writing is
never removed.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import os
import posixpath
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from types import EllipsisType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

#: Protocols of object stores, where one PUT (or a completed multipart upload) makes an
#: object appear whole and an aborted upload leaves nothing: objects are written directly.
OBJECT_STORE_PROTOCOLS = frozenset(
    {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oss", "r2", "tos", "cos"}
)


#: A temporary file whose writer cannot be checked from here is removed once it has not
#: been modified for this long (a day: far longer than any single write takes).
STALE_TEMP_SECONDS = 24 * 3600
_OWNED = re.compile(r"^(?:\.tmp-)?([0-9a-f]{8})\.(\d+)-")


@functools.cache
def _host_tag() -> str:
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            with open(path, encoding="ascii") as f:
                parts.append(f.read().strip())
        except OSError:
            parts.append("")
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("")
    return hashlib.sha1("|".join(parts).encode(), usedforsecurity=False).hexdigest()[:8]


def writer_tag() -> str:
    """``<host>.<pid>`` of this process, put in the names of its temporary files."""
    return f"{_host_tag()}.{os.getpid()}"


def temp_name(name: str) -> str:
    """A temporary name for ``name``, owned by this process: ``.tmp-<host>.<pid>-<uuid>-<name>``."""
    return f".tmp-{writer_tag()}-{uuid.uuid4().hex}-{name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")  # killed, not yet reaped


def is_stale_temp(name: str, mtime: float | None, *, now: float | None = None) -> bool:
    """Whether temporary file ``name`` (last modified at ``mtime``) was left by a crash."""
    m = _OWNED.match(name)
    if m is not None and m.group(1) == _host_tag():
        return not _pid_alive(int(m.group(2)))
    if mtime is None:
        return False
    return (now if now is not None else time.time()) - mtime > STALE_TEMP_SECONDS


def _mtime(entry: Mapping[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = entry.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


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
        #: Whether writes conditioned on an object's ETag (``If-Match``) or absence
        #: (``If-None-Match: *``) are honoured here; ``False`` until :meth:`probe_conditional`
        #: has seen the store refuse a write whose condition fails (S3 and stores that
        #: speak its API: AWS, MinIO, R2, Ceph, moto). The job's fence relies on it.
        self.conditional_writes = False
        #: S3: ETags of the objects this Storage wrote with :meth:`write_tagged`, and
        #: what the caller noted about each (see :meth:`note_of`).
        self._written: dict[str, tuple[str, str]] = {}

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

    def is_file(self, rel: str) -> bool:
        """Whether ``rel`` exists, with one request on object stores (a one-byte GET).

        ``exists`` costs a HEAD and, for a missing key, a LIST there.
        """
        if not self.direct_writes:
            return self.exists(rel)
        try:
            self.fs.cat_file(self.path(rel), start=0, end=1)
        except FileNotFoundError:
            return False
        except Exception:  # e.g. an empty object refuses the range: it exists
            return True
        return True

    def is_regular_file(self, rel: str) -> bool:
        """Whether ``rel`` is a regular file on a local root (``""``: the root itself)."""
        return self._is_local and os.path.isfile(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        """The whole content of ``rel``."""
        if self._known_sizes and _takes_max_concurrency(self.fs):
            # s3fs >= 2026.2 asks for the size first (a HEAD) to read big objects in
            # parallel ranges; one GET is enough for what is read whole here (manifest,
            # lock).
            whole: bytes = self.fs.cat_file(self.path(rel), max_concurrency=1)
            return whole
        data: bytes = self.fs.cat_file(self.path(rel))
        return data

    @contextmanager
    def open_read(self, rel: str) -> Iterator[IO[bytes]]:
        """Open ``rel`` for streaming reads.

        On S3, a file this Storage wrote is opened with its known size: s3fs would
        otherwise ask for it with a HEAD request first. (A file just listed is opened
        from the listing, which also gives s3fs its ETag, so the read never mixes two
        versions; the files whose size is remembered are never rewritten with other
        bytes: shards, retry shards and downloaded output files.)
        """
        path = self.path(rel)
        size = self._sizes.get(path)
        if size is not None and not self._listed(path):
            f = self.fs.open(path, "rb", size=size)
            with suppress(AttributeError):  # s3fs asks for the details at the first read
                f.details = {"name": path, "size": size, "type": "file"}
        else:
            f = self.fs.open(path, "rb")
        with f:
            yield f

    def _listed(self, path: str) -> bool:
        """Whether fsspec's listing cache holds ``path`` (its size and ETag, on S3)."""
        cache = getattr(self.fs, "dircache", None)
        if not cache:
            return False
        entries = cache.get(posixpath.dirname(path)) or ()
        return any(e.get("name") == path for e in entries)

    def list(self, rel: str) -> list[str]:
        """Relative paths of the files directly under directory ``rel`` (sorted)."""
        base = self.path(rel)
        if self.direct_writes:
            # One LIST: a missing "directory" is an empty listing there (``exists``
            # would send a HEAD and a LIST first).
            try:
                listed = self.fs.ls(base, detail=False)
            except FileNotFoundError:
                return []
        else:
            if not self.fs.exists(base):
                return []
            listed = self.fs.ls(base, detail=False)
        out = []
        for p in listed:
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

        Raises
        ------
        JobRootError
            The root is a regular file, or cannot be created or written.
        """
        if self.direct_writes:
            self._make_root()
            return
        with self._root_errors():
            self.fs.makedirs(self.path(rel), exist_ok=True)

    def _make_root(self) -> None:
        if not self._root_made:
            with self._root_errors():
                self.fs.makedirs(self.root, exist_ok=True)
            self._root_made = True

    @contextmanager
    def _root_errors(self) -> Iterator[None]:
        """Turn the ``OSError`` of a write that the root itself refuses into a JobRootError."""
        from batchframe.exceptions import JobRootError

        try:
            yield
        except (FileExistsError, NotADirectoryError, FileNotFoundError, PermissionError) as exc:
            problem = self._root_problem(exc)
            if problem is None:
                raise
            msg = f"the job root `{self.root_url}` {problem}"
            raise JobRootError(msg) from exc

    def _root_problem(self, exc: OSError) -> str | None:
        """What is wrong with the root, if that is why ``exc`` was raised."""
        import os

        hint = "choose another root (a directory path or fsspec URL)"
        if not self._is_local:
            if isinstance(exc, PermissionError):
                return f"cannot be written: permission denied ({exc}); {hint} or fix the access"
            return None
        path = self.root
        if os.path.lexists(path) and not os.path.isdir(path):
            return f"is a regular file, not a directory; {hint}, or move that file away"
        parent = path
        while parent and not os.path.lexists(parent):
            up = os.path.dirname(parent)
            if up == parent:
                break
            parent = up
        if parent and os.path.lexists(parent) and not os.path.isdir(parent):
            return f"cannot be created: `{parent}` is a regular file; {hint}"
        target = path if os.path.isdir(path) else parent
        if isinstance(exc, PermissionError) or (target and not os.access(target, os.W_OK)):
            return (
                f"cannot be {'written' if target == path else 'created'}: permission denied "
                f"on `{target}`; {hint}, or fix the permissions"
            )
        if not os.path.isdir(path):
            return f"cannot be created ({exc.strerror or exc}); {hint}"
        return None

    def write_bytes(self, rel: str, data: bytes | bytearray | memoryview) -> None:
        """Atomically write ``data`` to ``rel``.

        One PUT on object stores; a temporary file and a move elsewhere.
        """
        self._written.pop(self.path(rel), None)
        if self.direct_writes:
            self._make_root()
            with self._root_errors():
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
        tmp = posixpath.join(parent, temp_name(posixpath.basename(target)))
        with self._root_errors():
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            f = self.fs.open(tmp, "wb")
        try:
            with f:
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
        self._written.pop(target, None)
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
        self._written.pop(p, None)
        if self.direct_writes:
            with suppress(FileNotFoundError):  # one DELETE; a missing key is fine
                self.fs.rm_file(p)
            return
        if self.fs.exists(p):
            self.fs.rm(p)

    def remove_stale_temps(self, rels: Iterable[str]) -> tuple[str, ...]:
        """Remove the temporary files a crash left in directories ``rels``; return them.

        Temporary files are ``.tmp-*`` names, and ``*.part`` names in a ``.staging``
        directory. Only those :func:`is_stale_temp` judges left behind are removed: a
        file another live process is writing stays. Object stores have none (objects
        are written directly), so nothing is listed there.
        """
        if self.direct_writes:
            return ()
        removed: builtins.list[str] = []
        now = time.time()
        for rel in rels:
            try:
                entries = self.fs.ls(self.path(rel), detail=True)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                name = posixpath.basename(str(entry["name"]).rstrip("/"))
                staged = rel.endswith(".staging") and name.endswith(".part")
                if entry.get("type") == "directory" or not (name.startswith(".tmp-") or staged):
                    continue
                if not is_stale_temp(name, _mtime(entry), now=now):
                    continue
                try:
                    self.fs.rm_file(entry["name"])
                except FileNotFoundError:
                    continue
                removed.append(posixpath.join(rel, name) if rel else name)
        return tuple(removed)

    # -- conditional writes (the fence on object stores, see batchframe._fence) -------------
    def read_tagged(self, rel: str) -> tuple[bytes, str | None]:
        """The whole content of ``rel`` and its ETag (``None`` where there is none).

        One GET on S3, like :meth:`read_bytes`.
        """
        if not self._s3_api():
            return self.read_bytes(rel), None
        from fsspec.asyn import sync

        fs: Any = self.fs
        bucket, key, _ = fs.split_path(self.path(rel))

        async def get() -> tuple[bytes, str | None]:
            resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                return bytes(await resp["Body"].read()), resp.get("ETag")
            finally:
                resp["Body"].close()

        out: tuple[bytes, str | None] = sync(fs.loop, get)
        return out

    def write_if(
        self, rel: str, data: bytes | bytearray | memoryview, etag: str | EllipsisType | None
    ) -> str | None:
        """Write ``data`` to ``rel`` only if ``rel`` still has ``etag`` (``None``: is absent).

        One PUT with ``If-Match: <etag>`` (or ``If-None-Match: *``; ``...``: with no
        condition). Returns the new object's ETag. Only meaningful where
        :attr:`conditional_writes` is true.

        Raises
        ------
        WriteConflict
            The condition failed: another writer changed (or created) ``rel``.
        """
        fs: Any = self.fs
        match: dict[str, str] = {}
        if etag is None:
            match = {"IfNoneMatch": "*"}
        elif isinstance(etag, str):
            match = {"IfMatch": etag}
        self._make_root()
        try:
            with self._root_errors():
                resp = fs.pipe_file(self.path(rel), bytes(data), **match)
        except FileExistsError as exc:  # s3fs: a failed If-None-Match
            raise WriteConflict(rel) from exc
        except OSError as exc:
            if _precondition_failed(exc):
                raise WriteConflict(rel) from exc
            raise
        if self._known_sizes:
            self._sizes[self.path(rel)] = len(data)
        tag = resp.get("ETag") if isinstance(resp, dict) else None
        return str(tag) if tag is not None else None

    def write_tagged(self, rel: str, data: bytes | bytearray | memoryview, note: str) -> None:
        """Write ``data`` to ``rel`` (atomically) and remember ``note`` about this version.

        :meth:`note_of` returns ``note`` for as long as a listing shows the object with
        the ETag this write got (S3: no read needed to know what the file holds);
        elsewhere it is a plain :meth:`write_bytes`.
        """
        path = self.path(rel)
        self._written.pop(path, None)
        if not self._s3_api():
            self.write_bytes(rel, data)
            return
        etag = self.write_if(rel, data, ...)
        if etag is not None:
            self._written[path] = (etag, note)

    def note_of(self, rel: str) -> str | None:
        """The note of :meth:`write_tagged` for ``rel``, if the last listing shows that version.

        ``None`` when this Storage did not write ``rel``, when ``rel`` was not listed
        since (see :meth:`list`), or when the listing shows another version (another
        process wrote it since): then the caller reads the file.
        """
        path = self.path(rel)
        written = self._written.get(path)
        if written is None:
            return None
        cache = getattr(self.fs, "dircache", None) or {}
        for entry in cache.get(posixpath.dirname(path)) or ():
            if entry.get("name") == path:
                return written[1] if entry.get("ETag") == written[0] else None
        return None

    def probe_conditional(self) -> bool:
        """Find out, once, whether the store honours ``If-Match``; set and return it.

        Sends one PUT of an empty object ``.batchframe-probe`` on condition of an ETag
        it cannot have (the object does not exist): a store that honours conditions
        refuses it (404 or 412) and writes nothing; one that ignores them writes it,
        and the object is deleted again. On S3 only; elsewhere nothing is sent and the
        answer is ``False``.
        """
        if not self._s3_api():
            return False
        fs: Any = self.fs
        probe = self.path(".batchframe-probe")
        self._make_root()
        try:
            fs.pipe_file(probe, b"", IfMatch='"batchframe-probe"')
        except FileNotFoundError:  # NoSuchKey: the condition was checked
            self.conditional_writes = True
        except OSError as exc:
            self.conditional_writes = _precondition_failed(exc)
        except Exception:  # e.g. botocore too old to send the header: no conditions
            self.conditional_writes = False
        else:
            self.conditional_writes = False  # the store ignored the condition
            with suppress(Exception):
                fs.rm_file(probe)
        return self.conditional_writes

    def _s3_api(self) -> bool:
        return bool(_protocols(self.fs) & {"s3", "s3a"}) and hasattr(self.fs, "_call_s3")

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
            with self._root_errors():
                self.fs.makedirs(parent, exist_ok=True)
        if self._is_local:
            import os

            try:
                with self._root_errors():
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


class WriteConflict(Exception):
    """A conditional write found the object changed (or present) since it was read."""


def _precondition_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (an s3fs error) is a refused ``If-Match``/``If-None-Match``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if error.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return True
            if status in (409, 412):
                return True
        cur = cur.__cause__ or cur.__context__
    return False


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


def _takes_max_concurrency(fs: AbstractFileSystem) -> bool:
    """Whether ``fs.cat_file`` takes ``max_concurrency`` (s3fs releases that have it)."""
    import inspect

    cat = getattr(type(fs), "_cat_file", None)
    return cat is not None and "max_concurrency" in inspect.signature(cat).parameters


def _protocols(fs: AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)
