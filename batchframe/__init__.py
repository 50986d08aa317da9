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
from batchframe.exceptions import (
    APIError,
    BatchframeError,
    ColumnNotFoundError,
    CustomIdError,
    DuplicateCustomIdError,
    EncodingError,
    EndpointError,
    InputError,
    JobError,
    JobExistsError,
    JobLockedError,
    JobNotFoundError,
    JobNotSettledError,
    LimitError,
    ManifestVersionError,
    NullValueError,
    RequestTooLargeError,
    ResultsError,
    StreamingNotSupportedError,
    TemplateError,
)

# -- foundation (requests, limits, shards) --
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
from batchframe._config import BatchLimits
from batchframe._requests import Requests, build_requests

# -- local server --

# -- results --

# -- job --

__version__ = "0.1.0"

__all__ = [
    "ENDPOINTS",
    "APIError",
    "BatchframeError",
    "BatchLimits",
    "build_requests",
    "chat_body",
    "ColumnNotFoundError",
    "completions_body",
    "CustomIdError",
    "DuplicateCustomIdError",
    "embeddings_body",
    "EncodingError",
    "EndpointError",
    "exceptions",
    "image_body",
    "image_edit_body",
    "InputError",
    "JobError",
    "JobExistsError",
    "JobLockedError",
    "JobNotFoundError",
    "JobNotSettledError",
    "LimitError",
    "ManifestVersionError",
    "moderations_body",
    "NullValueError",
    "Requests",
    "RequestTooLargeError",
    "responses_body",
    "ResultsError",
    "StreamingNotSupportedError",
    "TemplateError",
    "__version__",
]
