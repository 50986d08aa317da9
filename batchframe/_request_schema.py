"""The Batch API's request schemas, as tables: required and known keys, roles, limits.

Required and known keys are those of the ``openai`` package's ``*CreateParams``
TypedDicts (openai 3.57; ``tests/test_request_checks.py`` compares them with the
installed package, which is never imported at run time: it is slow to import). Used by
the checks before upload (``_checks``) and by the local server's per-line validation
(``_server._body_checks``).
"""

from __future__ import annotations

#: Keys a body must have (``Required[...]`` in the openai TypedDicts; ``model`` is
#: required by the Batch API on every endpoint, and image edits take the JSON
#: ``images`` list in a batch instead of the multipart ``image``).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("model", "messages"),
    "/v1/responses": ("model",),
    "/v1/embeddings": ("model", "input"),
    "/v1/completions": ("model", "prompt"),
    "/v1/moderations": ("model", "input"),
    "/v1/images/generations": ("model", "prompt"),
    "/v1/images/edits": ("model", "prompt", "images"),
}

#: Every key of each endpoint's create params (openai 3.57), plus ``stream``.
KNOWN_KEYS: dict[str, frozenset[str]] = {
    "/v1/chat/completions": frozenset(
        [
            "audio",
            "frequency_penalty",
            "function_call",
            "functions",
            "logit_bias",
            "logprobs",
            "max_completion_tokens",
            "max_tokens",
            "messages",
            "metadata",
            "modalities",
            "model",
            "moderation",
            "n",
            "parallel_tool_calls",
            "prediction",
            "presence_penalty",
            "prompt_cache_key",
            "prompt_cache_options",
            "prompt_cache_retention",
            "reasoning_effort",
            "response_format",
            "safety_identifier",
            "seed",
            "service_tier",
            "stop",
            "store",
            "stream",
            "stream_options",
            "temperature",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "user",
            "verbosity",
            "web_search_options",
        ]
    ),
    "/v1/responses": frozenset(
        [
            "access_programs",
            "background",
            "background_options",
            "context_management",
            "conversation",
            "image",
            "include",
            "input",
            "instructions",
            "max_output_tokens",
            "max_tool_calls",
            "metadata",
            "model",
            "moderation",
            "parallel_tool_calls",
            "previous_response_id",
            "prompt",
            "prompt_cache_key",
            "prompt_cache_options",
            "prompt_cache_retention",
            "reasoning",
            "safety_identifier",
            "service_tier",
            "store",
            "stream",
            "stream_options",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "truncation",
            "user",
        ]
    ),
    "/v1/embeddings": frozenset(["dimensions", "encoding_format", "input", "model", "user"]),
    "/v1/completions": frozenset(
        [
            "best_of",
            "echo",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "max_tokens",
            "model",
            "n",
            "presence_penalty",
            "prompt",
            "seed",
            "stop",
            "stream",
            "stream_options",
            "suffix",
            "temperature",
            "top_p",
            "user",
        ]
    ),
    "/v1/moderations": frozenset(("input", "model")),
    "/v1/images/generations": frozenset(
        [
            "background",
            "complexity",
            "frame_count",
            "frame_duration_ms",
            "model",
            "moderation",
            "n",
            "output_compression",
            "output_format",
            "partial_images",
            "prompt",
            "quality",
            "response_format",
            "safety_identifier",
            "size",
            "stream",
            "style",
            "svg",
            "user",
        ]
    ),
    "/v1/images/edits": frozenset(
        [
            "background",
            "complexity",
            "frame_count",
            "frame_duration_ms",
            "images",
            "input_fidelity",
            "markup",
            "mask",
            "model",
            "n",
            "output_compression",
            "output_format",
            "partial_images",
            "prompt",
            "quality",
            "response_format",
            "safety_identifier",
            "size",
            "stream",
            "svg",
            "user",
        ]
    ),
}

#: ``messages[].role`` of chat, and the keys each role requires besides ``role``.
CHAT_ROLES: dict[str, tuple[str, ...]] = {
    "developer": ("content",),
    "system": ("content",),
    "user": ("content",),
    "assistant": (),
    "tool": ("content", "tool_call_id"),
    "function": ("content", "name"),
}
#: ``type`` of a chat content part.
CHAT_PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")
#: ``role`` of a responses input message.
RESPONSES_ROLES = ("user", "assistant", "system", "developer")
#: "any array must be 2048 dimensions or less" (``EmbeddingCreateParams.input``).
MAX_EMBEDDING_INPUTS_PER_REQUEST = 2048
ENCODING_FORMATS = ("float", "base64")

#: Numeric parameters: (integer only, minimum, maximum), as the API enforces them.
NUMBERS: dict[str, tuple[bool, float | None, float | None]] = {
    "temperature": (False, 0, 2),
    "top_p": (False, 0, 1),
    "frequency_penalty": (False, -2, 2),
    "presence_penalty": (False, -2, 2),
    "n": (True, 1, 128),
    "max_tokens": (True, 1, None),
    "max_completion_tokens": (True, 1, None),
    "max_output_tokens": (True, 1, None),
    "top_logprobs": (True, 0, 20),
    "dimensions": (True, 1, None),
    "seed": (True, None, None),
    "best_of": (True, 0, 20),
}


def number_specs(endpoint: str) -> dict[str, tuple[bool, float | None, float | None]]:
    """:data:`NUMBERS` as ``endpoint`` enforces them.

    Legacy completions take ``max_tokens=0`` (with ``echo``, to score a prompt).
    """
    if endpoint == "/v1/completions":
        return {**NUMBERS, "max_tokens": (True, 0, None)}
    return NUMBERS


#: Text, as the encoder takes it (binary is decoded as UTF-8 there, or refused).

#: ``type`` of a responses content part.
RESPONSES_PART_TYPES = (
    "input_text",
    "input_image",
    "input_file",
    "input_audio",
    "output_text",
    "refusal",
)
