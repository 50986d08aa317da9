"""A :class:`~batchframe._api.BatchAPI` as it arrives in another process.

Executors that pickle their tasks (Dask's ``client.get_executor()``, Ray) receive the
job's per-shard calls (uploads, downloads) with a :class:`RemoteAPI` in place of the
driver's ``BatchAPI``: the base URL and retry policy travel, the API key does not. The
real client is built at the first call, in the worker, from that process's environment
(``OPENAI_API_KEY``); unpickling alone (Dask's scheduler does it) builds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from batchframe._api import BatchAPI, RetryPolicy

__all__ = ["RemoteAPI", "SplitExecutor", "job_executor"]

T = TypeVar("T")


class RemoteAPI:
    """Stands for a ``BatchAPI`` in another process; builds it at the first call."""

    def __init__(self, base_url: str, retry: RetryPolicy) -> None:
        self._base_url = base_url
        self._retry = retry
        self._api: BatchAPI | None = None

    def real(self) -> BatchAPI:
        """The ``BatchAPI`` of this process (built once, key from the environment)."""
        if self._api is None:
            from batchframe._api import BatchAPI, make_client

            self._api = BatchAPI(make_client(self._base_url), retry=self._retry)
        return self._api

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Call(self, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteAPI, (self._base_url, self._retry))


class _Call:
    """``RemoteAPI.<name>``: a picklable method that builds the API when called."""

    def __init__(self, api: RemoteAPI, name: str) -> None:
        self.api = api
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.api.real(), self.name)(*args, **kwargs)


class SplitExecutor(Executor):
    """A user's executor for the per-shard API calls; the job's threads for the rest.

    Executors that run tasks in other processes (Dask's ``client.get_executor()``, a
    ``ProcessPoolExecutor``) must pickle what they run. The uploads and downloads are
    plain data (a storage handle, paths, and a :class:`RemoteAPI`) and go there; the
    job's own steps (polling, parsing, publishing), which share the job's state, run on
    a local thread pool. Shutting down shuts only that pool: the user's executor is
    theirs.
    """

    def __init__(self, remote: Executor, local: Executor) -> None:
        self.remote = remote
        self.local = local

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn`` remotely when it is a ``BatchAPI`` call, else on the local pool."""
        from batchframe._api import BatchAPI

        target = self.remote if isinstance(getattr(fn, "__self__", None), BatchAPI) else self.local
        return target.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut down the local pool (not the user's executor)."""
        self.local.shutdown(wait=wait, cancel_futures=cancel_futures)


def job_executor(
    executor: Executor | None, make_pool: Callable[[], ThreadPoolExecutor]
) -> tuple[Executor, bool]:
    """The executor a job runs its per-shard work on, and whether the job owns it.

    ``None``: the job's own thread pool. A ``ThreadPoolExecutor``: used for everything
    (threads share the job's state). Any other executor: a :class:`SplitExecutor`.
    """
    if executor is None:
        return make_pool(), True
    if isinstance(executor, ThreadPoolExecutor):
        return executor, False
    return SplitExecutor(executor, make_pool()), True
