"""Shape checks: a 2xx body whose fields do not have the declared JSON types fails to parse.

DuckDB's ``from_json`` reads a body into declared structures leniently, and silently: a
value of another JSON type becomes NULL (a scalar or object where an array is declared,
an array where a number is: ``"embedding": [[...], [...]]`` gave vectors of NULLs), a
struct of NULLs (a non-object where an object is declared) or its JSON text (a
non-string where a string is declared). Absent members are NULL too. So a typed value
alone cannot tell "not there" from "there, but of another type".

This module writes, per endpoint, the SQL that tells them apart: one ``_shape`` column
per row, NULL when every field the typed columns read has the declared JSON type (or is
absent or null where that is allowed) and every required field is there, else (a code
for) a message naming the first field that does not fit (:func:`explain`). It costs little on well-formed bodies: the
typed values decide most cases on their own, and the body is looked at again
(``json_type`` at the field's path, one parse for all of a row's doubtful fields) only
where a typed value is ambiguous: a string that could be another value's JSON text
(it starts with ``{``, ``[``, a digit or ``-``, or is ``true``/``false``), or a NULL
where the member might hold something of another type.

Chat's checks read the values :mod:`batchframe._chat_cut` takes out by JSON path (their
text: NULL only where a member is absent or null), and run only on the rows whose text
leaves a doubt; the other endpoints' read the typed body ``b``.

Numbers are the exception, by design: DuckDB reads a numeric string or a boolean where a
number is declared as that number (``"7"`` -> 7, ``true`` -> 1; a float where an integer
is declared is rounded); only values it cannot read as a number (objects, arrays, other
strings) fail. Keys are matched as written: a member whose key is spelled with ``\\u``
escapes is not seen (no JSON writer escapes ASCII letters).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["explain", "shape_sql"]


@dataclass(frozen=True, slots=True)
class _Probe:
    """A field whose typed value is ambiguous where ``when`` holds: its JSON type decides.

    ``allowed``: JSON types (``json_type`` names) that are fine; absent or null is fine
    unless ``required``. ``on_allowed``: the problem when the type is allowed but
    ``when`` still holds (e.g. an object that holds none of the members needed).
    """

    name: str
    path: str
    when: str
    allowed: tuple[str, ...]
    expect: str
    required: bool = False
    on_allowed: str | None = None


# JSON kinds as a message says them, from DuckDB's `json_type` names.
_KINDS = {
    "OBJECT": "an object",
    "ARRAY": "an array",
    "VARCHAR": "a string",
    "BOOLEAN": "a boolean",
    "DOUBLE": "a number",
    "UBIGINT": "an integer",
    "BIGINT": "an integer",
}


@dataclass(frozen=True, slots=True)
class _Direct:
    """A problem read off the typed values alone, looked at only where ``gate`` holds."""

    gate: str
    problem: str


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sus(x: str) -> str:
    """Whether the VARCHAR ``x`` may be the JSON text of a non-string (then probe it).

    It starts with ``-``, a digit, ``[`` or ``{`` (by code point: cheaper than ``left``),
    or is ``true``/``false``.
    """
    return (
        f"(ord({x}) BETWEEN 45 AND 57 AND ord({x}) NOT IN (46, 47) OR ord({x}) IN (91, 123) "
        f"OR {x} IN ('true', 'false'))"
    )


def _string(name: str, path: str, x: str, *, required: bool = False) -> _Probe:
    when = f"({x} IS NULL OR {_sus(x)})" if required else _sus(x)
    return _Probe(name, path, when, ("VARCHAR",), "a string", required)


def _integer(name: str, path: str, x: str) -> _Probe:
    return _Probe(name, path, f"{x} IS NULL", (), "an integer")


def _object(name: str, path: str, leaves: list[str], **kw: object) -> _Probe:
    """An object whose typed leaves are all NULL: absent, empty, or not an object."""
    when = " AND ".join(f"{leaf} IS NULL" for leaf in leaves)
    return _Probe(name, path, f"({when})", ("OBJECT",), "an object", **kw)  # type: ignore[arg-type]


def _usage(
    u: str, fields: list[str], details: dict[str, str], at: dict[str, str] | None = None
) -> list[_Probe]:
    """``usage`` (optional): an object of integers, with optional detail objects.

    Each integer is read at ``{u}.{path}``, or at ``at[path]`` where ``at`` names it (a
    value column instead of a struct path).
    """

    def leaf(path: str) -> str:
        return at[path] if at is not None and path in at else f"{u}.{path}"

    paths = fields + [f"{d}.{k}" for d, k in details.items()]
    probes = [_object("usage", ".usage", [leaf(f) for f in paths])]
    probes += [_integer(f"usage.{f}", f".usage.{f}", leaf(f)) for f in fields]
    for d, k in details.items():
        probes.append(_object(f"usage.{d}", f".usage.{d}", [leaf(f"{d}.{k}")]))
        probes.append(_integer(f"usage.{d}.{k}", f".usage.{d}.{k}", leaf(f"{d}.{k}")))
    return probes


def _first_problem(items: str, problem: str, var: str = "x", index: str = "i") -> str:
    """The first non-NULL ``problem`` over the list ``items`` (``var``, 1-based ``index``)."""
    each = f"list_transform({items}, lambda {var}, {index}: {problem})"
    return f"list_filter({each}, lambda m: m IS NOT NULL)[1]"


def _at(prefix: str, *parts: str) -> str:
    """SQL for a JSON path built from literal parts and SQL expressions (``{expr}``)."""
    out = [_lit(prefix)]
    for p in parts:
        out.append(p[1:-1] if p.startswith("{") else _lit(p))
    return " || ".join(out)


def _probe_problem(p: _Probe, k: int, t: str) -> str:
    """A short code (``#k:TYPE``, ``#k:missing``, ``#k:empty``) where probe ``k`` fails.

    The message is written from it outside SQL (:func:`explain`): string constants
    repeated per probe made DuckDB's binder the largest cost of a small query.
    """
    missing = f"'#{k}:missing'" if p.required else "NULL"
    allowed = f"{t} IN ({', '.join(_lit(a) for a in p.allowed)})" if p.allowed else "false"
    ok = f"'#{k}:empty'" if p.on_allowed else "NULL"
    return (
        f"CASE WHEN {p.when} THEN CASE WHEN {t} IS NULL OR {t} = 'NULL' THEN {missing} "
        f"WHEN {allowed} THEN {ok} ELSE '#{k}:' || {t} END END"
    )


def _chat(raw: str, prefix: str) -> list[_Probe | _Direct]:
    """Chat's checks, over the value columns ``_duckdb_json`` reads for chat (not a typed ``b``).

    Containers (``choices``, its first element, the message, ``usage`` and its detail
    objects) have no value of their own: they are looked at where every leaf read
    under them is NULL, which is where one of them may be absent or not a container.
    """
    leaves = ["_content", "_refusal", "_tool_calls"]
    none = " AND ".join(f"{v} IS NULL" for v in [*leaves, "_finish"])
    probes: list[_Probe | _Direct] = [
        _Probe("choices", ".choices", f"({none})", ("ARRAY",), "an array", required=True),
        _Direct(
            f"({none})",
            f"CASE WHEN json_array_length({raw}, {_lit(prefix + '.choices')}) = 0 "
            "THEN '`choices` is empty' END",
        ),
        _object("choices[0]", ".choices[0]", [*leaves, "_finish"], required=True),
        _object(
            "choices[0].message",
            ".choices[0].message",
            leaves,
            required=True,
            on_allowed="`choices[0].message` holds no content, refusal or tool_calls",
        ),
        _string("choices[0].message.content", ".choices[0].message.content", "_content"),
        _string("choices[0].message.refusal", ".choices[0].message.refusal", "_refusal"),
        # Its text alone cannot tell an array from a string holding one: the body tells
        # (rows with tool calls are always looked at).
        _Probe(
            "choices[0].message.tool_calls",
            ".choices[0].message.tool_calls",
            "_tool_calls IS NOT NULL",
            ("ARRAY",),
            "an array",
        ),
        _Direct(
            "_tool_calls IS NOT NULL",
            _first_problem(
                "_tc",
                "CASE WHEN NOT coalesce(left(x.function.name, 1) = '\"' AND "
                "left(x.function.arguments, 1) = '\"' AND coalesce(left(x.id, 1), '\"') = '\"' "
                "AND coalesce(left(x.type, 1), '\"') = '\"', false) THEN "
                "'`choices[0].message.tool_calls[' || (i - 1) || ']` should be an object with "
                "string `function.name` and `function.arguments`' END",
            ),
        ),
        _string("choices[0].finish_reason", ".choices[0].finish_reason", "_finish", required=True),
        _string("model", ".model", "_model"),
    ]
    probes += _usage(
        "",
        ["prompt_tokens", "completion_tokens", "total_tokens"],
        {
            "prompt_tokens_details": "cached_tokens",
            "completion_tokens_details": "reasoning_tokens",
        },
        at={
            "prompt_tokens": "_pt",
            "completion_tokens": "_ct",
            "total_tokens": "_tt",
            "prompt_tokens_details.cached_tokens": "_cached",
            "completion_tokens_details.reasoning_tokens": "_reasoning",
        },
    )
    return probes


def _completions(b: str) -> list[_Probe | _Direct]:
    c = "_c1"
    probes: list[_Probe | _Direct] = [
        _Probe("choices", ".choices", f"{b}.choices IS NULL", (), "an array", required=True),
        _Direct(f"len({b}.choices) = 0", "'`choices` is empty'"),
        _object("choices[0]", ".choices[0]", [f"{c}.text", f"{c}.finish_reason"], required=True),
        _string("choices[0].text", ".choices[0].text", f"{c}.text", required=True),
        _string(
            "choices[0].finish_reason",
            ".choices[0].finish_reason",
            f"{c}.finish_reason",
            required=True,
        ),
        _string("model", ".model", f"{b}.model"),
    ]
    probes += _usage("_u", ["prompt_tokens", "completion_tokens", "total_tokens"], {})
    return probes


def _responses(b: str, raw: str, prefix: str) -> list[_Probe | _Direct]:
    def text_problem(field: str, kind: str) -> str:
        path = _at(prefix, ".output[", "{(i - 1)}", "].content[", "{(j - 1)}", f"].{field}")
        name = f"'`output[' || (i - 1) || '].content[' || (j - 1) || '].{field}`"
        return (
            f"CASE WHEN p.type <> '{kind}' THEN NULL "
            f"WHEN p.{field} IS NULL THEN {name} is missing' "
            f"WHEN {_sus(f'p.{field}')} AND json_type({raw}, {path}) <> 'VARCHAR' "
            f"THEN {name} should be a string' END"
        )

    part = (
        "CASE WHEN p.type IS NULL OR "
        + _sus("p.type")
        + " THEN '`output[' || (i - 1) || '].content[' || (j - 1) || ']` should be an object "
        "with a string `type`' ELSE coalesce("
        + text_problem("text", "output_text")
        + ", "
        + text_problem("refusal", "refusal")
        + ") END"
    )
    item = (
        "CASE WHEN o.type IS NULL OR "
        + _sus("o.type")
        + " THEN '`output[' || (i - 1) || ']` should be an object with a string `type`' "
        "WHEN o.type <> 'message' THEN NULL "
        "WHEN o.content IS NULL THEN '`output[' || (i - 1) || '].content` should be an array' "
        f"ELSE {_first_problem('o.content', part, 'p', 'j')} END"
    )
    probes: list[_Probe | _Direct] = [
        _Probe("output", ".output", f"{b}.output IS NULL", (), "an array", required=True),
        _Direct(f"{b}.output IS NOT NULL", _first_problem(f"{b}.output", item, "o", "i")),
        _string("model", ".model", f"{b}.model"),
        _string("status", ".status", f"{b}.status"),
    ]
    probes += _usage(
        "_u",
        ["input_tokens", "output_tokens", "total_tokens"],
        {"input_tokens_details": "cached_tokens", "output_tokens_details": "reasoning_tokens"},
    )
    return probes


def _embeddings(b: str, base64: bool) -> list[_Probe | _Direct]:
    at = "'`data[' || (i - 1) || ']"
    if base64:
        vector = (
            f"WHEN x.embedding IS NULL THEN {at}.embedding` is missing' "
            f"WHEN {_sus('x.embedding')} OR try(from_base64(x.embedding)) IS NULL "
            f"THEN {at}.embedding` should be a base64 string' "
        )
    else:
        vector = (
            f"WHEN x.embedding IS NULL THEN {at}.embedding` should be an array of numbers' "
            # A NULL element (a nested array, an object, a non-numeric string): finding
            # the first NULL costs ~1/5 of counting the elements (`list_count`).
            f"WHEN list_position(x.embedding, NULL) IS NOT NULL THEN {at}.embedding` should be "
            "an array of numbers but holds something else (a nested array?)' "
        )
    element = (
        f"CASE WHEN x.index IS NULL AND x.embedding IS NULL THEN {at}` should be an object' "
        f"WHEN x.index IS NULL THEN {at}.index` should be an integer' {vector}END"
    )
    usage_type = f"json_type({b}.usage, '$.prompt_tokens')"
    probes: list[_Probe | _Direct] = [
        # (An empty `data` fails later, as `no_embeddings`.)
        _Probe("data", ".data", f"{b}.data IS NULL", (), "an array", required=True),
        _Direct(f"{b}.data IS NOT NULL", _first_problem(f"{b}.data", element)),
        _Direct(
            f"{b}.usage IS NOT NULL",
            f"CASE WHEN left({b}.usage, 1) <> '{{' THEN '`usage` should be an object' "
            f"WHEN {usage_type} NOT IN ('NULL', 'UBIGINT', 'BIGINT') "
            "THEN '`usage.prompt_tokens` should be an integer' END",
        ),
        _string("model", ".model", f"{b}.model"),
    ]
    return probes


def _moderations(b: str, raw: str, prefix: str) -> list[_Probe | _Direct]:
    from batchframe._schemas import MODERATION_CATEGORIES

    def member(obj: str, name: str, expect: str) -> str:
        path = _at(prefix, ".results[", "{(i - 1)}", f'].{obj}."{name}"')
        return (
            f'CASE WHEN x.{obj}."{name}" IS NULL AND json_type({raw}, {path}) '
            f"NOT IN ('NULL') THEN '`results[' || (i - 1) || '].{obj}.{name}` should be "
            f"{expect}' END"
        )

    checks = ["x.flagged IS NULL"]
    whole = []
    for obj in ("categories", "category_scores"):
        leaves = " AND ".join(f'x.{obj}."{c}" IS NULL' for c in MODERATION_CATEGORIES)
        whole.append(
            f"WHEN {leaves} THEN '`results[' || (i - 1) || '].{obj}` should be an object' "
        )
    per = [member("categories", c, "a boolean") for c in MODERATION_CATEGORIES]
    per += [member("category_scores", c, "a number") for c in MODERATION_CATEGORIES]
    element = (
        f"CASE WHEN {checks[0]} THEN '`results[' || (i - 1) || '].flagged` should be a "
        f"boolean' {''.join(whole)}ELSE coalesce({', '.join(per)}) END"
    )
    probes: list[_Probe | _Direct] = [
        _Probe("results", ".results", f"{b}.results IS NULL", (), "an array", required=True),
        _Direct(f"len({b}.results) = 0", "'`results` is empty'"),
        _Direct(f"{b}.results IS NOT NULL", _first_problem(f"{b}.results", element)),
        _string("model", ".model", f"{b}.model"),
    ]
    return probes


def _images(b: str) -> list[_Probe | _Direct]:
    d = f"{b}.data[1]"
    probes: list[_Probe | _Direct] = [
        _Probe("data", ".data", f"{b}.data IS NULL", (), "an array", required=True),
        _Direct(f"len({b}.data) = 0", "'`data` is empty'"),
        _object(
            "data[0]",
            ".data[0]",
            [f"{d}.b64_json", f"{d}.url"],
            required=True,
            on_allowed="`data[0]` holds neither `b64_json` nor `url`",
        ),
        _string("data[0].b64_json", ".data[0].b64_json", f"{d}.b64_json"),
        _string("data[0].url", ".data[0].url", f"{d}.url"),
        _string("data[0].revised_prompt", ".data[0].revised_prompt", f"{d}.revised_prompt"),
        _string("model", ".model", f"{b}.model"),
    ]
    probes += _usage("_u", ["input_tokens", "output_tokens", "total_tokens"], {})
    return probes


#: Struct paths the checks name often, computed once per row as columns.
_ALIASES = {
    "completions": {"_c1": "b.choices[1]", "_u": "b.usage"},
    "responses": {"_u": "b.usage"},
    "images": {"_u": "b.usage"},
}


def _checks(kind: str, base64: bool, raw: str, prefix: str) -> list[_Probe | _Direct]:
    b = "b"
    if kind == "chat/completions":
        return _chat(raw, prefix)
    if kind == "completions":
        return _completions(b)
    if kind == "responses":
        return _responses(b, raw, prefix)
    if kind == "embeddings":
        return _embeddings(b, base64)
    if kind == "moderations":
        return _moderations(b, raw, prefix)
    if kind == "images":
        return _images(b)
    return []


def shape_sql(kind: str, base64: bool, *, raw: str, prefix: str, ok: str) -> tuple[str, str]:
    """``(wrapper, _shape expression)`` for the typed body ``b`` of ``kind``.

    ``raw`` is the SQL of the JSON text the body lies in, at path ``prefix`` (``'$'`` for
    a cut body, ``'$.response.body'`` for a whole line); ``ok`` is true for 2xx rows
    (only those are checked). ``wrapper`` is a query with a ``{source}`` placeholder for
    the query giving ``b``: it adds ``_check`` (whether the row needs a look at all) and
    ``_types`` (the JSON types of the row's doubtful fields, in one parse); the
    ``_shape`` expression is then computed over it. ``_shape`` is NULL, a message, or a
    code that :func:`explain` turns into one.
    """
    checks = _checks(kind, base64, raw, prefix)
    if not checks:
        return "{source}", "NULL::VARCHAR"
    probes = [c for c in checks if isinstance(c, _Probe)]
    gates = [c.gate for c in checks if isinstance(c, _Direct)]
    paths = ", ".join(_lit(prefix + p.path) for p in probes)
    doubt = " OR ".join(f"({p.when})" for p in probes)
    problems = []
    k = 0
    for c in checks:
        if isinstance(c, _Probe):
            k += 1
            problems.append(_probe_problem(c, k, f"_types[{k}]"))
        else:
            problems.append(f"CASE WHEN {c.gate} THEN {c.problem} END")
    aliases = "".join(f", {v} AS {n}" for n, v in _ALIASES.get(kind, {}).items())
    # Each condition once per row: most rows pass every gate and skip the rest.
    gated = f"""
        SELECT *, CASE WHEN _doubt THEN json_type({raw}, [{paths}]) END AS _types,
            _doubt OR coalesce(({ok}) AND ({" OR ".join(gates) or "false"}), false) AS _check
        FROM (
            SELECT *, coalesce(({ok}) AND ({doubt}), false) AS _doubt
            FROM (SELECT *{aliases} FROM ({{source}})))"""
    return gated, f"CASE WHEN _check THEN coalesce({', '.join(problems)}) END"


def explain(kind: str, base64: bool, code: str) -> str:
    """The message for a ``_shape`` value (a code ``#k:...`` of probe ``k``, or a message)."""
    if not code.startswith("#"):
        return code
    number, _, found = code[1:].partition(":")
    probe = [c for c in _checks(kind, base64, "", "$") if isinstance(c, _Probe)][int(number) - 1]
    if found == "missing":
        return f"`{probe.name}` is missing"
    if found == "empty":
        return probe.on_allowed or f"`{probe.name}` is empty"
    return f"`{probe.name}` should be {probe.expect} but is {_KINDS.get(found, found)}"
