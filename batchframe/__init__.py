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
from batchframe._dataset import ResultsDataset, results_dataset
from batchframe._job import BatchJob
from batchframe._read import read_results, results_to_duckdb, scan_results
from batchframe._requests import Requests
from batchframe._results import BatchResults
from batchframe._run import run
from batchframe._server import LocalBatchServer
from batchframe.exceptions import (
    APIError,
    BatchframeError,
    ColumnNotFoundError,
    CustomIdError,
    DuplicateCustomIdError,
    EncodingError,
    EndpointError,
    EvaluationError,
    InputError,
    InvalidTransitionError,
    JobError,
    JobExistsError,
    JobLockedError,
    JobNotFoundError,
    JobNotSettledError,
    JobTimeoutError,
    LimitError,
    ManifestVersionError,
    NullValueError,
    RequestTooLargeError,
    ResultsError,
    ResultsTooLargeError,
    StreamingNotSupportedError,
    TemplateError,
)

__version__ = "0.1.0"

__all__ = [
    "ENDPOINTS",
    "APIError",
    "BatchJob",
    "BatchLimits",
    "BatchResults",
    "BatchframeError",
    "ColumnNotFoundError",
    "CustomIdError",
    "DuplicateCustomIdError",
    "EncodingError",
    "EndpointError",
    "EvaluationError",
    "InputError",
    "InvalidTransitionError",
    "JobError",
    "JobExistsError",
    "JobLockedError",
    "JobNotFoundError",
    "JobNotSettledError",
    "JobTimeoutError",
    "LimitError",
    "LocalBatchServer",
    "ManifestVersionError",
    "NullValueError",
    "RequestTooLargeError",
    "Requests",
    "ResultsDataset",
    "ResultsError",
    "ResultsTooLargeError",
    "StreamingNotSupportedError",
    "TemplateError",
    "__version__",
    "build_requests",
    "chat_body",
    "completions_body",
    "embeddings_body",
    "exceptions",
    "image_body",
    "image_edit_body",
    "moderations_body",
    "read_results",
    "responses_body",
    "results_dataset",
    "results_to_duckdb",
    "run",
    "scan_results",
]
