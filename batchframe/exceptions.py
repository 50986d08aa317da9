"""The batchframe error tree.

Every error batchframe raises is a :class:`BatchframeError`. Input problems are found
before anything is written or uploaded; they also inherit :class:`ValueError` (or
:class:`KeyError` for missing columns) so generic handlers keep working::

    BatchframeError
    ├── InputError(ValueError)              the table or template cannot become valid requests
    │   ├── ColumnNotFoundError(KeyError)   a template or custom_id names a missing column
    │   ├── EndpointError                   endpoint is not one the Batch API serves
    │   ├── TemplateError                   the body template is not valid JSON material
    │   │   └── InvalidBodyError            a body the endpoint refuses (missing or foreign
    │   │                                   key, wrong type, empty list, unknown role, ...)
    │   ├── CustomIdError                   null, empty or too long custom_id
    │   │   └── DuplicateCustomIdError      the same custom_id on several rows
    │   ├── NullValueError                  a template leaf is null on some rows
    │   ├── StreamingNotSupportedError      the body asks for ``"stream": true``
    │   ├── RequestTooLargeError            a single line is larger than ``max_bytes``
    │   └── EncodingError                   text that is not valid UTF-8
    ├── LimitError(ValueError)              BatchLimits values that make no sense
    ├── JobError                            the job at a root cannot do what was asked
    │   ├── JobNotFoundError(FileNotFoundError)
    │   ├── JobExistsError                  a different job already lives at that root
    │   ├── JobLockedError                  another live process (or another host) holds the root
    │   ├── ManifestVersionError            the manifest was written by a newer batchframe
    │   ├── ManifestDamagedError            the manifest and its previous version are unreadable
    │   ├── JobRootError(OSError)           the job root is a file, or cannot be made or written
    │   ├── InvalidTransitionError(RuntimeError)
    │   │                                   a shard attempt asked for an illegal state move
    │   └── JobNotSettledError              results asked for before every row is settled
    │       └── JobTimeoutError(TimeoutError)
    │                                       ``wait(timeout=)`` / ``cancel(timeout=)`` ran out
    ├── APIError                            the API refused a call or kept failing; the openai
    │                                       error is ``__cause__``; attributes ``operation``,
    │                                       ``status_code``, ``code``, ``retryable``
    ├── ResultsError                        output files that cannot be read back
    │   └── ResultsTooLargeError            ``collect()`` of results above ``max_bytes``;
    │                                       use ``scan_results`` / ``to_duckdb``
    ├── ProviderError(ValueError)           a provider profile or an option it does not take
    └── CostLimitError                      the estimate or the running cost passes ``max_cost``

Row-level failures (a request the API answered with an error) never raise: they land in
``BatchResults.failed`` with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "APIError",
    "BatchframeError",
    "ColumnNotFoundError",
    "CostLimitError",
    "CustomIdError",
    "DuplicateCustomIdError",
    "EncodingError",
    "EndpointError",
    "InputError",
    "InvalidBodyError",
    "InvalidTransitionError",
    "JobError",
    "JobExistsError",
    "JobLockedError",
    "JobNotFoundError",
    "JobNotSettledError",
    "JobRootError",
    "JobTimeoutError",
    "LimitError",
    "ManifestDamagedError",
    "ManifestVersionError",
    "NullValueError",
    "ProviderError",
    "RequestTooLargeError",
    "ResultsError",
    "ResultsTooLargeError",
    "StreamingNotSupportedError",
    "TemplateError",
]


class BatchframeError(Exception):
    """Base class of every error raised by batchframe."""


class InputError(BatchframeError, ValueError):
    """The input table or body template cannot become valid Batch API requests.

    Raised before anything is written or uploaded.

    Attributes
    ----------
    rows
        Positions (0-based, in input order) of the first offending rows, if any.
    column
        The offending column or template path, if one can be named.
    custom_ids
        The ``custom_id`` of each row in ``rows``, when the ids were known (empty for
        ids derived from content, or when the id itself is what is wrong).
    """

    def __init__(
        self,
        message: str,
        *,
        rows: Sequence[int] = (),
        column: str | None = None,
        custom_ids: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.rows = list(rows)
        self.column = column
        self.custom_ids = list(custom_ids)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ColumnNotFoundError(InputError, KeyError):
    """A template leaf or ``custom_id`` names a column the table does not have."""


class EndpointError(InputError):
    """The endpoint is not one the Batch API accepts."""


class TemplateError(InputError):
    """The body template holds something that is not JSON (a set, NaN, a non-string key...)."""


class InvalidBodyError(TemplateError):
    """A request body the endpoint refuses, line by line, once the batch runs.

    A required key is missing (``messages``, ``input``, ...), a key belongs to another
    endpoint, or a value has a type or value the request schema does not allow (an
    empty ``messages`` list, an empty embeddings ``input``, more than 2,048 inputs in
    one embeddings request, a struct where ``content`` must be text, an unknown
    ``role``, a non-text ``model``). Found before anything is written or uploaded.
    """


class EvaluationError(InputError):
    """The input could not be read, or the template evaluated on it (Polars' error chained)."""


class CustomIdError(InputError):
    """A ``custom_id`` is null, empty or otherwise unusable."""


class DuplicateCustomIdError(CustomIdError):
    """The same ``custom_id`` appears on more than one row."""


class NullValueError(InputError):
    """A template leaf evaluates to null on some rows (a null prompt or input)."""


class StreamingNotSupportedError(InputError):
    """The body asks for ``"stream": true``, which the Batch API rejects."""


class RequestTooLargeError(InputError):
    """A single request line is larger than the per-file byte limit."""


class EncodingError(InputError):
    """Text in the input is not valid UTF-8."""


class LimitError(BatchframeError, ValueError):
    """``BatchLimits`` holds a value that cannot work (zero, negative, over the API's cap)."""


class JobError(BatchframeError):
    """The job at a root cannot do what was asked."""


class JobNotFoundError(JobError, FileNotFoundError):
    """No job manifest exists at the given root."""


class JobExistsError(JobError):
    """A job made from different requests already lives at that root."""


class JobLockedError(JobError):
    """Another live process holds the job's lock."""


class ManifestVersionError(JobError):
    """The manifest was written by a newer batchframe than this one."""


class ManifestDamagedError(JobError):
    """``manifest.json`` cannot be read and no readable previous version is left.

    The message names the file, the job id when it can be read from the damaged bytes,
    and what to do. (A damaged manifest with a readable ``manifest.prev.json`` is
    recovered with a warning instead.)
    """


class JobRootError(JobError, OSError):
    """The job root cannot be used: it is a regular file, or it cannot be created or written.

    The ``OSError`` that said so is ``__cause__``.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidTransitionError(JobError, RuntimeError):
    """A shard attempt was asked to move between states the job never moves between.

    This is a bug in batchframe or a manifest edited by hand; it is never caused by
    the API's answers.
    """


class JobNotSettledError(JobError):
    """Results were asked for before every row reached a final state."""


class JobTimeoutError(JobNotSettledError, TimeoutError):
    """``BatchJob.wait``/``BatchJob.cancel`` (or ``bf.run``) gave up after ``timeout`` seconds.

    The job's state is saved; calling the same method again continues where it stopped.
    """


class APIError(BatchframeError):
    """The Batch or Files API refused a call, or kept failing after retries.

    The original ``openai`` exception is available as ``__cause__``.

    Attributes
    ----------
    operation
        Which call failed (``"batches.create"``, ``"files.create"``, ...), if known.
    status_code
        HTTP status of the last attempt; ``None`` for connection errors.
    code
        The API's error code (``body.error.code``) when it sent one.
    retryable
        Whether the last failure was of a transient kind (429, 5xx, a dropped
        connection): calling the same method again later may succeed.
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str | None = None,
        status_code: int | None = None,
        code: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.status_code = status_code
        self.code = code
        self.retryable = retryable


class ResultsError(BatchframeError):
    """Downloaded output or error files cannot be read back."""


class ResultsTooLargeError(ResultsError):
    """``collect()`` / ``read_results`` refused results larger than ``max_bytes``.

    Read them without loading them: ``bf.scan_results(root)``, ``job.to_duckdb(...)``,
    ``bf.results_to_duckdb(root, ...)``, or the published Parquet dataset under
    ``<root>/results/``; or pass ``max_bytes=None``.

    Attributes
    ----------
    size
        Estimated size of the results: bytes of their output and error files.
    max_bytes
        The threshold that was exceeded.
    """

    def __init__(self, message: str, *, size: int, max_bytes: int) -> None:
        super().__init__(message)
        self.size = size
        self.max_bytes = max_bytes


# -- providers, files and cost (batchframe._providers, batchframe._cost) --------------------
class ProviderError(BatchframeError, ValueError):
    """A provider profile or option that cannot work.

    An unknown provider, a ``completion_window`` / expiry / endpoint the provider does
    not take, or a job resumed with another provider than it was created for.
    """


class CostLimitError(BatchframeError):
    """The job's estimated or running cost would pass ``max_cost``.

    Raised before anything is uploaded when the whole job's estimate exceeds the cap,
    and by ``submit``/``wait`` when the cost so far plus the estimate of the next shard
    would: the job is paused with its state saved; raise the cap with
    ``job.configure(max_cost=...)`` (or ``bf.run(..., max_cost=...)``) to resume.

    Attributes
    ----------
    spent
        USD of the batches submitted so far (actual usage where known, else estimated).
    next_cost
        Estimated USD of what would be submitted next (or of the whole job).
    max_cost
        The cap.
    """

    def __init__(self, message: str, *, spent: float, next_cost: float, max_cost: float) -> None:
        super().__init__(message)
        self.spent = spent
        self.next_cost = next_cost
        self.max_cost = max_cost
