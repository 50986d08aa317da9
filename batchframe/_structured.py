"""Structured outputs in the strict ``json_schema`` form the API expects.

Pydantic models or JSON schemas are converted, and the schema is remembered so results
can be parsed into typed columns.
"""

from __future__ import annotations

import re
from typing import Any

from batchframe._api import strict_json_schema, strict_raw_json_schema
from batchframe.exceptions import TemplateError


def _is_model_class(obj: object) -> bool:
    return isinstance(obj, type) and hasattr(obj, "model_json_schema")


def _name(raw: object) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(raw or "response"))[:64]
    return name or "response"


def strictify(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of a JSON schema with every object closed and every property required.

    This is what the API's strict mode demands. The openai package's own converter does
    it, as for pydantic models: it walks schema keywords, so a property *named*
    ``properties`` (or ``type``, ``items``, ...) is left alone.
    """
    if "properties" in schema and "type" not in schema:  # an object, by its shape
        schema = {"type": "object", **schema}
    return strict_raw_json_schema(schema)


def _schema_of(fmt: Any, where: str) -> tuple[str, dict[str, Any]]:
    if _is_model_class(fmt):
        return _name(fmt.__name__), strict_json_schema(fmt)
    if isinstance(fmt, dict) and ("properties" in fmt or fmt.get("type") == "object"):
        return _name(fmt.get("title")), strictify(fmt)
    msg = (
        f"`{where}` must be a pydantic model class, a JSON schema (dict with `properties`), "
        f"or the API's own `json_schema` form; got {type(fmt).__name__}"
    )
    raise TemplateError(msg, column=where)


def normalize(endpoint: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Return the body with its structured-output field in API form, and the schema.

    Chat: ``response_format``. Responses: ``text.format``. Anything already in the
    API's form is kept as is; its schema is still remembered.
    """
    if endpoint == "/v1/chat/completions" and body.get("response_format") is not None:
        fmt = body["response_format"]
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "text"):
            return body, None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            inner = fmt.get("json_schema") or {}
            schema = inner.get("schema")
            return body, schema if isinstance(schema, dict) else None
        name, schema = _schema_of(fmt, "response_format")
        rf = {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        }
        return {**body, "response_format": rf}, schema
    text = body.get("text")
    if endpoint == "/v1/responses" and isinstance(text, dict) and text.get("format") is not None:
        fmt = text["format"]
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "text"):
            return body, None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
            return body, schema if isinstance(schema, dict) else None
        name, schema = _schema_of(fmt, "text.format")
        tf = {"type": "json_schema", "name": name, "schema": schema, "strict": True}
        return {**body, "text": {**text, "format": tf}}, schema
    return body, None
