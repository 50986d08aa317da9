"""A job's files on the provider: names, expiry, deletion once safe, orphans, cleanup.

Every input file a job uploads is named ``<job_id>-<shard attempt>.jsonl``, so the
files of a job can be found with ``files.list`` alone. The rules:

* an input file is deleted once its shard attempt is settled (its rows are stored
  under the root); output and error files once downloaded and settled; the
  ``keep_files`` option keeps any of the three kinds;
* a file of the job that no record holds (a crash or a lost answer between
  ``files.create`` and the manifest save) is adopted by its record when that record
  still waits for an upload and the size matches, and deleted otherwise;
* deleted ids are remembered in the manifest (``options["deleted_files"]``), so a
  deletion is never repeated and the resource cap can count live files.

Nothing here imports ``openai``; calls go through :class:`batchframe._api.BatchAPI`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from batchframe._providers import DEFAULT_EXPIRES_AFTER, Provider, get_provider
from batchframe.exceptions import ProviderError

if TYPE_CHECKING:
    from batchframe._api import BatchAPI, RemoteFile
    from batchframe._manifest import Manifest, ShardAttempt

__all__ = [
    "FILE_KINDS",
    "adopt_orphans",
    "cleanup_job",
    "delete_settled",
    "file_room",
    "job_provider",
    "keep_kinds",
    "upload_name",
]

_log = logging.getLogger("batchframe")

FILE_KINDS = ("input", "output", "error")


def keep_kinds(keep_files: Any) -> list[str]:
    """Normalise ``keep_files``: ``True`` keeps every kind, ``False`` none, or name kinds."""
    if keep_files is True:
        return list(FILE_KINDS)
    if keep_files is False or keep_files is None:
        return []
    kinds = [keep_files] if isinstance(keep_files, str) else list(keep_files)
    bad = [k for k in kinds if k not in FILE_KINDS]
    if bad:
        msg = (
            f"keep_files={keep_files!r}: use True, False, or some of "
            f"{', '.join(repr(k) for k in FILE_KINDS)}"
        )
        raise ProviderError(msg)
    return sorted(set(kinds), key=FILE_KINDS.index)


def job_provider(m: Manifest) -> Provider:
    """The provider profile a job was created with (``"openai"`` for older jobs)."""
    data = m.options.get("provider")
    if isinstance(data, dict):
        from batchframe._providers import Provider

        return Provider.from_dict(data)
    return get_provider("openai")


def expires_after(m: Manifest) -> int | None:
    """Seconds after which uploaded files expire (``None``: kept until deleted)."""
    value = m.options.get("expires_after", DEFAULT_EXPIRES_AFTER)
    return None if value is None else int(value)


def upload_name(job_id: str, key: str) -> str:
    """The file name of a shard attempt's upload: ``<job_id>-<key>.jsonl``."""
    return f"{job_id}-{key}.jsonl"


def _key_of(job_id: str, filename: str) -> str | None:
    prefix = f"{job_id}-"
    if filename.startswith(prefix) and filename.endswith(".jsonl"):
        return filename[len(prefix) : -len(".jsonl")]
    return None


def _deleted(m: Manifest) -> list[str]:
    out = m.options.setdefault("deleted_files", [])
    assert isinstance(out, list)
    return out


def _record_files(r: ShardAttempt) -> Iterable[tuple[str, str]]:
    if r.input_file_id:
        yield "input", r.input_file_id
    if r.output_file_id:
        yield "output", r.output_file_id
    if r.error_file_id:
        yield "error", r.error_file_id


def live_files(m: Manifest) -> int:
    """Files the job holds on the provider now (recorded and not deleted)."""
    gone = set(_deleted(m))
    ids = {fid for r in m.records for _, fid in _record_files(r)}
    return len(ids - gone)


def file_room(m: Manifest) -> int | None:
    """How many more input files the provider's resource cap lets the job upload now.

    ``None`` when the provider has no cap. Each batch also makes up to two output
    files, so an upload is admitted only with room for its outputs too.
    """
    cap = job_provider(m).file_cap(expiring=expires_after(m) is not None)
    if cap is None:
        return None
    return max(0, (cap - live_files(m)) // 3)


def stuck_at_file_cap(m: Manifest) -> None:
    """Raise when the resource file cap blocks every upload and nothing will free a file."""
    if not all(r.is_settled or r.status == "pending" for r in m.records):
        return  # a batch is still to be created, running, or to be settled: files free up
    prof = job_provider(m)
    cap = prof.file_cap(expiring=expires_after(m) is not None)
    msg = (
        f"job {m.job_id} holds {live_files(m)} file(s) on provider {prof.name!r}, whose "
        f"resource takes at most {cap}, and keeps them (keep_files={m.options.get('keep_files')}); "
        "no shard can be uploaded. Run `batchframe cleanup ROOT` (or delete files), or "
        "create the job with keep_files=False, then wait again"
    )
    raise ProviderError(msg)


def delete_settled(api: BatchAPI, m: Manifest) -> int:
    """Delete the provider files of settled shard attempts (unless kept); return how many.

    A file is deleted once its attempt is settled: its rows are published under the
    root and every retry was written as a child shard. A failed deletion is logged
    and tried again at the next call.
    """
    keep = set(m.options.get("keep_files") or [])
    if keep == set(FILE_KINDS):
        return 0
    gone = _deleted(m)
    seen = set(gone)
    n = 0
    for r in m.records:
        if not r.is_settled:
            continue
        for kind, fid in _record_files(r):
            if kind in keep or fid in seen:
                continue
            try:
                api.delete_file(fid)
            except Exception as exc:
                _log.warning(
                    "could not delete %s file %s of %s (kept for now): %s", kind, fid, r.key, exc
                )
                continue
            gone.append(fid)
            seen.add(fid)
            n += 1
    if n:
        # Not saved here: the next save records them (a deletion repeated after a crash
        # finds the file gone, which counts as deleted), so on object stores deleting
        # costs no extra manifest write.
        _log.info("deleted %d file(s) of settled shard attempts from the provider", n)
    return n


def adopt_orphans(api: BatchAPI, m: Manifest, save: Callable[[], None]) -> tuple[int, int]:
    """Find the job's uploads that no record holds; adopt or delete them.

    A file named for a record that still waits for its upload (``pending``, no input
    file) and of the record's size becomes that record's input file; any other
    unrecorded file of the job is deleted. Returns ``(adopted, deleted)``.
    """
    try:
        files = api.list_files(purpose="batch")
    except Exception as exc:  # a provider without files.list: nothing to adopt from
        _log.warning("could not list files to find uploads a crash left: %s", exc)
        return 0, 0
    return _settle_orphans(api, m, files, save)


def _settle_orphans(
    api: BatchAPI, m: Manifest, files: list[RemoteFile], save: Callable[[], None]
) -> tuple[int, int]:
    import time

    held = {fid for r in m.records for _, fid in _record_files(r)}
    gone = _deleted(m)
    by_key = {r.key: r for r in m.records}
    adopted = deleted = 0
    for f in sorted(files, key=lambda f: (f.created_at, f.id)):
        key = _key_of(m.job_id, f.filename)
        if key is None:
            continue
        if f.id in held and f.id not in gone:
            continue
        r = by_key.get(key)
        if (
            f.id not in gone
            and r is not None
            and r.status == "pending"
            and r.input_file_id is None
            and f.bytes == r.n_bytes
        ):
            _log.info("adopting file %s as the upload of %s (made before a crash)", f.id, r.key)
            r.input_file_id = f.id
            r.uploaded_at = r.uploaded_at or time.time()
            r.move("uploaded")
            held.add(f.id)
            adopted += 1
            save()
            continue
        try:
            api.delete_file(f.id)
        except Exception as exc:
            _log.warning("could not delete stray file %s of job %s: %s", f.id, m.job_id, exc)
            continue
        _log.info("deleted stray file %s (%s) that no shard attempt holds", f.id, f.filename)
        if f.id not in gone:
            gone.append(f.id)
        deleted += 1
    if deleted:
        save()
    return adopted, deleted


def cleanup_job(api: BatchAPI, m: Manifest, save: Callable[[], None]) -> int:
    """Delete every file the job left on the provider (inputs, outputs, strays).

    Files of shard attempts that are not settled are left alone (their batches still
    need them); returns how many files were deleted.
    """
    busy = {fid for r in m.records if not r.is_settled for _, fid in _record_files(r)}
    gone = _deleted(m)
    n = 0
    for r in m.records:
        if not r.is_settled:
            continue
        for _, fid in _record_files(r):
            if fid in gone:
                continue
            try:
                api.delete_file(fid)
            except Exception as exc:
                _log.warning("could not delete file %s: %s", fid, exc)
                continue
            gone.append(fid)
            n += 1
    for f in api.list_files(purpose="batch"):
        if _key_of(m.job_id, f.filename) is None or f.id in busy:
            continue
        try:
            if api.delete_file(f.id):
                n += 1
        except Exception as exc:
            _log.warning("could not delete file %s: %s", f.id, exc)
            continue
        if f.id not in gone:
            gone.append(f.id)
    save()
    return n


def rewrite_line_urls(storage: Any, written: Any, provider: Provider, endpoint: str) -> Any:
    """Rewrite each shard's line ``url`` for providers whose lines differ (Azure legacy).

    The lines are copied with their ``"url":"/v1/..."`` part replaced (the first one of
    each line: it precedes the body), each file written atomically; returns ``written``
    with the new sizes and hashes. Lines only get shorter, so every limit still holds.
    """
    import hashlib

    import polars as pl

    from batchframe._requests import line_affixes

    url = provider.line_url(endpoint)
    if url == endpoint:
        return written
    old = line_affixes(endpoint)[1].encode()
    new = line_affixes(url)[1].encode()
    sizes: list[int] = []
    hashes: list[str] = []
    for shard in written["shard"].to_list():
        from batchframe._requests import shard_path

        rel = shard_path(int(shard))
        digest = hashlib.sha256()
        size = 0
        # Streamed line by line: the new file appears whole when done (open_write), and
        # the old one is read meanwhile, so memory holds one line, not the shard.
        with storage.open_read(rel) as src, storage.open_write(rel) as dst:
            for line in src:
                line = line.replace(old, new, 1)
                digest.update(line)
                dst.write(line)
                size += len(line)
        sizes.append(size)
        hashes.append(digest.hexdigest())
    return written.with_columns(
        pl.Series("n_bytes", sizes, pl.Int64), pl.Series("sha256", hashes, pl.String)
    )
