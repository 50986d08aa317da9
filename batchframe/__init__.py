"""batchframe: bulk LLM inference through the OpenAI Batch API, table in, typed table out.

>>> import polars as pl
>>> import batchframe as bf
>>> requests = bf.build_requests(
...     pl.DataFrame({"id": [1, 2], "text": ["good", "bad"]}),
...     endpoint="/v1/chat/completions",
...     body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
...     custom_id="id",
... )
>>> requests.plan()["n_requests"].to_list()
[2]
"""

from __future__ import annotations

import typing as _typing

from batchframe import exceptions
from batchframe._bodies import (
    ENDPOINTS,
    chat_body,
    completions_body,
    embeddings_body,
    image_body,
    image_edit_body,
    moderations_body,
    responses_body,
)
from batchframe._build import build_requests
from batchframe._config import BatchLimits
from batchframe._cost import price_table, refresh_prices
from batchframe._dataset import ResultsDataset, results_dataset
from batchframe._job import BatchJob
from batchframe._providers import Provider, get_provider
from batchframe._read import read_results, results_to_duckdb, scan_results
from batchframe._requests import Requests
from batchframe._results import BatchResults
from batchframe._run import run
from batchframe._schedule import RetryBackoff
from batchframe.exceptions import (
    APIError,
    BatchframeError,
    ColumnNotFoundError,
    CostLimitError,
    CustomIdError,
    DuplicateCustomIdError,
    EncodingError,
    EndpointError,
    EvaluationError,
    InputError,
    InvalidBodyError,
    InvalidTransitionError,
    JobError,
    JobExistsError,
    JobLockedError,
    JobNotFoundError,
    JobNotSettledError,
    JobRootError,
    JobTimeoutError,
    LimitError,
    ManifestDamagedError,
    ManifestVersionError,
    NullValueError,
    ProviderError,
    RequestTooLargeError,
    ResultsError,
    ResultsTooLargeError,
    StreamingNotSupportedError,
    TemplateError,
)

if _typing.TYPE_CHECKING:
    from batchframe._server import LocalBatchServer

__version__ = "0.1.0"

__all__ = [
    "ENDPOINTS",
    "APIError",
    "BatchJob",
    "BatchLimits",
    "BatchResults",
    "BatchframeError",
    "ColumnNotFoundError",
    "CostLimitError",
    "CustomIdError",
    "DuplicateCustomIdError",
    "EncodingError",
    "EndpointError",
    "EvaluationError",
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
    "LocalBatchServer",
    "ManifestDamagedError",
    "ManifestVersionError",
    "NullValueError",
    "Provider",
    "ProviderError",
    "RequestTooLargeError",
    "Requests",
    "ResultsDataset",
    "ResultsError",
    "ResultsTooLargeError",
    "RetryBackoff",
    "StreamingNotSupportedError",
    "TemplateError",
    "__version__",
    "build_requests",
    "chat_body",
    "completions_body",
    "embeddings_body",
    "exceptions",
    "get_provider",
    "image_body",
    "image_edit_body",
    "moderations_body",
    "price_table",
    "read_results",
    "refresh_prices",
    "responses_body",
    "results_dataset",
    "results_to_duckdb",
    "run",
    "scan_results",
]


def __getattr__(name: str) -> _typing.Any:
    # The local server (http.server and friends) loads when first asked for, so that
    # `import batchframe` and the CLI start fast.
    if name == "LocalBatchServer":
        from batchframe._server import LocalBatchServer

        globals()[name] = LocalBatchServer
        return LocalBatchServer
    msg = f"module 'batchframe' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"LocalBatchServer"})
