"""Make a JSON value that satisfies a JSON schema (the echo executor's structured output).

Covers what strict structured outputs use: ``object`` (every property), ``array``
(``minItems``/``maxItems``), ``string`` (``enum``, ``const``, ``format``, lengths),
``number``/``integer`` (bounds), ``boolean``, ``null``, type lists, ``enum``, ``const``,
``anyOf``/``oneOf``/``allOf`` and ``$ref`` to ``#/$defs/...`` or ``#/definitions/...``.
Choices (which enum member, which ``anyOf`` branch) come from a ``random.Random``
seeded by the caller, so the same input always gives the same value.
"""

from __future__ import annotations

import math
import random
from typing import Any

_MAX_DEPTH = 12
_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "user@example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "duration": "P1D",
}


def fill_schema(schema: Any, *, rng: random.Random, text: str = "") -> Any:
    """Return a value valid under ``schema``.

    Parameters
    ----------
    schema
        A JSON schema (a dict; ``True``/``{}`` accept anything).
    rng
        Source of the choices.
    text
        Text to derive strings from (the request's input), so answers look related.
    """
    return _Filler(schema, rng, text).value(schema, 0, "value")


class _Filler:
    def __init__(self, root: Any, rng: random.Random, text: str) -> None:
        self.root = root
        self.rng = rng
        self.text = " ".join(text.split())[:60]

    def resolve(self, ref: str) -> Any:
        node = self.root
        for part in ref.lstrip("#").split("/"):
            if part:
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def value(self, schema: Any, depth: int, name: str) -> Any:
        if not isinstance(schema, dict):
            return None if schema is False else self.text or name
        if "$ref" in schema:
            target = self.resolve(schema["$ref"])
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.value({**target, **rest} if rest else target, depth + 1, name)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(schema["enum"])
        if "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for sub in schema["allOf"]:
                sub = self.resolve(sub["$ref"]) if isinstance(sub, dict) and "$ref" in sub else sub
                if isinstance(sub, dict):
                    props = {**merged.get("properties", {}), **sub.get("properties", {})}
                    merged = {**merged, **sub, "properties": props}
            return self.value(merged, depth + 1, name)
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                options = schema[key]
                if depth >= _MAX_DEPTH:  # prefer a branch that ends the recursion
                    for option in options:
                        if isinstance(option, dict) and option.get("type") == "null":
                            return None
                return self.value(self.rng.choice(options), depth + 1, name)
        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            if not non_null or (depth >= _MAX_DEPTH and "null" in kind):
                return None
            kind = self.rng.choice(non_null)
        if kind is None:
            if "properties" in schema:
                kind = "object"
            elif "items" in schema:
                kind = "array"
            else:
                return self.text or name
        if kind == "object":
            props = schema.get("properties", {})
            return {key: self.value(sub, depth + 1, key) for key, sub in props.items()}
        if kind == "array":
            if isinstance(schema.get("prefixItems"), list):
                return [self.value(sub, depth + 1, name) for sub in schema["prefixItems"]]
            low = int(schema.get("minItems", 0))
            high = int(schema.get("maxItems", max(low, 3)))
            wanted = 1 + self.rng.randint(0, 1) if depth < _MAX_DEPTH else 0
            count = min(high, max(low, wanted))
            items = schema.get("items", {})
            return [self.value(items, depth + 1, name) for _ in range(count)]
        if kind == "string":
            return self.string(schema, name)
        if kind in ("number", "integer"):
            return self.number(schema, kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        return None

    def string(self, schema: dict[str, Any], name: str) -> str:
        fmt = schema.get("format")
        text = _FORMATS.get(fmt, "") if isinstance(fmt, str) else ""
        if not text:
            text = f"{name}: {self.text}" if self.text else name
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        if len(text) < low:
            text = text + "x" * (low - len(text))
        if high is not None and len(text) > int(high):
            text = text[: int(high)]
        return text

    def number(self, schema: dict[str, Any], integer: bool) -> int | float:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        low_f = float(low) if low is not None else (0.0 if high is None else float(high) - 100)
        high_f = float(high) if high is not None else low_f + 100
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            low_f += 1 if integer else 1e-6
        if "exclusiveMaximum" in schema and "maximum" not in schema:
            high_f -= 1 if integer else 1e-6
        if integer:
            lo, hi = math.ceil(low_f), math.floor(high_f)
            return self.rng.randint(lo, max(lo, hi))
        value = round(self.rng.uniform(low_f, max(low_f, high_f)), 4)
        return min(max(value, low_f), max(low_f, high_f))
