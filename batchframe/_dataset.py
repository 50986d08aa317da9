"""The published results as a dataset for other readers: Polars, Ray, Dask, DuckDB.

* :func:`results_dataset` returns the paths of a job's published Parquet files and a
  filesystem that reads them, the two things ``ray.data.read_parquet`` and
  ``dask.dataframe.read_parquet`` need.
* :func:`polars_options` translates fsspec ``storage_options`` (s3fs, gcsfs, adlfs) into
  the options of Polars' own cloud reader, so that ``scan_results`` on a remote root
  reads the files in place instead of copying them into a local cache first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

if TYPE_CHECKING:
    from pathlib import Path

    from batchframe._publish import PartFile
    from batchframe._storage import Storage

__all__ = ["ResultsDataset", "polars_options", "results_dataset", "scan_files"]

_log = logging.getLogger("batchframe")

_S3 = {"s3", "s3a"}
_GCS = {"gs", "gcs"}
_AZURE = {"az", "abfs", "abfss", "adl"}


def _protocols(storage: Storage) -> set[str]:
    proto = storage.fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)


def polars_options(storage: Storage) -> dict[str, str] | None:
    """``storage``'s fsspec options as Polars cloud options; None when they do not translate.

    S3 (s3fs): ``key``, ``secret``, ``token``, ``endpoint_url`` (also inside
    ``client_kwargs``, with ``region_name``), ``anon``, ``profile``. GCS (gcsfs): ``token``
    as a service-account file. Azure (adlfs): ``account_name``, ``account_key``,
    ``sas_token``. Any other option (or another filesystem) gives None: the caller
    falls back to reading through fsspec.
    """
    protos = _protocols(storage)
    opts = dict(storage.storage_options)
    out: dict[str, str] = {}
    if protos & _S3:
        client = dict(opts.pop("client_kwargs", None) or {})
        endpoint = opts.pop("endpoint_url", None) or client.pop("endpoint_url", None)
        region = client.pop("region_name", None)
        if client:
            return None
        names = {
            "key": "aws_access_key_id",
            "secret": "aws_secret_access_key",
            "token": "aws_session_token",
            "profile": "aws_profile",
        }
        for k, name in names.items():
            if opts.get(k) is not None:
                out[name] = str(opts.pop(k))
        if opts.pop("anon", False):
            out["aws_skip_signature"] = "true"
        if endpoint:
            out["aws_endpoint_url"] = str(endpoint)
            if str(endpoint).startswith("http://"):
                out["aws_allow_http"] = "true"
        if region:
            out["aws_region"] = str(region)
    elif protos & _GCS:
        token = opts.pop("token", None)
        if isinstance(token, str) and os.path.exists(token):
            out["google_service_account"] = token
        elif token is not None:
            return None
        opts.pop("project", None)
    elif protos & _AZURE:
        for k in ("account_name", "account_key", "sas_token"):
            if opts.get(k) is not None:
                out[k] = str(opts.pop(k))
    else:
        return None
    return None if opts else out


def scan_files(storage: Storage, files: list[PartFile], mirror: Path) -> pl.LazyFrame:
    """A ``pl.scan_parquet`` over published files: in place when Polars can read them.

    Local files are scanned where they are; files on an object store whose options
    translate (:func:`polars_options`) are read by Polars' own cloud reader; anything
    else is copied once into ``mirror`` and scanned there.
    """
    from batchframe._publish import local_copy

    remote = [f for f in files if f.local is None]
    opts = polars_options(storage) if remote else None
    if opts is not None:
        urls = [f.local if f.local is not None else storage.url(f.rel) for f in files]
        lf = pl.scan_parquet(urls, storage_options=opts or None)
        try:
            lf.collect_schema()  # reads the first file's footer: are the options enough?
        except Exception:
            _log.info("Polars cannot read %s itself; copying the files", storage.root_url)
        else:
            return lf
    return pl.scan_parquet([local_copy(storage, f, mirror) for f in files])


@dataclass(frozen=True)
class ResultsDataset:
    """A job's published results: Parquet files and a filesystem that reads them.

    Attributes
    ----------
    paths
        The files, as paths of :attr:`filesystem` (no ``s3://`` prefix), in
        ``(shard, attempt)`` order. Empty when the part holds no rows.
    urls
        The same files as URLs (``s3://bucket/jobs/x/results/ok/00000.a0.parquet``, or
        local paths), for readers that take URLs and ``storage_options``.
    filesystem
        A ``pyarrow.fs.FileSystem`` for :attr:`paths` (the root's fsspec filesystem
        wrapped for Arrow), as ``ray.data.read_parquet`` and
        ``dask.dataframe.read_parquet`` accept.
    fsspec
        The root's fsspec filesystem.
    storage_options
        The fsspec options the root was opened with.
    """

    paths: list[str]
    urls: list[str]
    filesystem: Any
    fsspec: Any
    storage_options: dict[str, Any]


def results_dataset(
    root: str | os.PathLike[str],
    *,
    part: Literal["ok", "failed"] = "ok",
    storage_options: Mapping[str, Any] | None = None,
    partial: bool = False,
) -> ResultsDataset:
    """The published Parquet files of the job at ``root``, for Ray, Dask or any Arrow reader.

    Files that are missing are published first (as :func:`scan_results` does). Each
    worker of the engine then reads the files it is given from the root itself::

        ds = bf.results_dataset("s3://bucket/jobs/x", storage_options=opts)
        ray.data.read_parquet(ds.paths, filesystem=ds.filesystem)
        dask.dataframe.read_parquet(ds.paths, filesystem=ds.filesystem)

    Parameters
    ----------
    root
        The job's directory or fsspec URL.
    part
        ``"ok"`` (typed successes) or ``"failed"`` (failed rows with the reason).
    storage_options
        fsspec options for ``root``.
    partial
        Return the files settled so far instead of raising while the job runs.

    Returns
    -------
    ResultsDataset
        ``paths`` and ``filesystem`` (and ``urls``, ``fsspec``). When the root cannot
        be written and some files had to be rebuilt beside it, every file is given from
        the local cache instead (readable on this machine only).

    Raises
    ------
    JobNotFoundError
        No job at ``root``.
    JobNotSettledError
        Some rows are not settled and ``partial`` is false.
    """
    import pyarrow.fs as pafs

    from batchframe._manifest import Manifest
    from batchframe._publish import READ_WINDOW, local_copy, publish, settled_records
    from batchframe._read import _mirror_dir
    from batchframe._storage import Storage

    if part not in ("ok", "failed"):
        msg = f"`part` must be 'ok' or 'failed', got {part!r}"
        raise ValueError(msg)
    storage = Storage(os.fspath(root), storage_options)
    manifest = Manifest.load(storage)
    settled_records(manifest, partial=partial)
    with ThreadPoolExecutor(max_workers=READ_WINDOW, thread_name_prefix="batchframe") as pool:
        files = publish(
            storage, manifest, executor=pool, partial=partial, mirror=_mirror_dir
        ).files(part)
    under_root = all(f.local is None or f.local == storage.path(f.rel) for f in files)
    if under_root:
        paths = [storage.path(f.rel) for f in files]
        urls = [storage.url(f.rel) for f in files]
        fs = storage.fs
    else:
        from fsspec.implementations.local import LocalFileSystem

        mirror = _mirror_dir(manifest.job_id)
        paths = urls = [local_copy(storage, f, mirror) for f in files]
        fs = LocalFileSystem()
    local = "file" in ({fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol))
    arrow_fs = pafs.LocalFileSystem() if local else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return ResultsDataset(
        paths=paths,
        urls=urls,
        filesystem=arrow_fs,
        fsspec=fs,
        storage_options=dict(storage.storage_options),
    )
