"""Body templates for the command line: JSON whose leaves name columns.

The notation (``batchframe submit --help`` shows it too):

``"{{text}}"``
    A string that is exactly one placeholder is the column itself, ``pl.col("text")``,
    with its own type: a number stays a number, a list of strings stays a JSON array.
``"Review of {{product}}: {{text}}"``
    Placeholders inside a longer string insert the column's value as text (numbers,
    dates and booleans are written as text). A null in any of them makes the whole
    string null, which ``build_requests`` refuses, naming the rows.
``{"$col": "name"}``
    An object with the single key ``$col`` is the column ``name``; use it for names
    that contain braces or start or end with spaces.
``{"$lit": value}``
    An object with the single key ``$lit`` is ``value`` exactly as written, never
    interpreted (for text that contains ``{{``, or an object that has a ``$col`` key).
``{{{{``
    Inside a string, four opening braces are a literal ``{{``.

Spaces inside the braces are ignored (``{{ text }}`` is ``{{text}}``). Object keys are
never interpreted. A ``{{`` that does not start a placeholder is an error, so a typo such
as ``{{text}`` is caught instead of being sent as text.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from batchframe.exceptions import TemplateError

__all__ = ["compile_string", "compile_template"]

# Order matters: the escape first, then a placeholder (no braces inside), then a stray `{{`.
_TOKEN = re.compile(r"\{\{\{\{|\{\{([^{}]*)\}\}|\{\{")


def compile_template(node: Any, path: str = "body") -> Any:
    """Turn parsed template JSON into a ``build_requests`` body template.

    Parameters
    ----------
    node
        The parsed JSON (dicts, lists, strings, numbers, booleans, ``None``).
    path
        Where ``node`` sits in the template, for error messages.

    Returns
    -------
    Any
        The same structure with column references replaced by Polars expressions.

    Raises
    ------
    TemplateError
        A malformed placeholder or ``$col`` object; the message names its path.

    Examples
    --------
    >>> compile_template({"model": "m", "input": "{{text}}"})["input"].meta.output_name()
    'text'
    >>> compile_template({"content": "say {{{{hi}}"})
    {'content': 'say {{hi}}'}
    """
    if isinstance(node, dict):
        if len(node) == 1:
            ((key, value),) = node.items()
            if key == "$col":
                if not isinstance(value, str) or not value:
                    msg = f"`{path}`: `$col` must name a column (a non-empty string), got {value!r}"
                    raise TemplateError(msg, column=path)
                return pl.col(value)
            if key == "$lit":
                return value
        return {key: compile_template(value, f"{path}.{key}") for key, value in node.items()}
    if isinstance(node, list):
        return [compile_template(value, f"{path}[{i}]") for i, value in enumerate(node)]
    if isinstance(node, str):
        return compile_string(node, path)
    return node


def compile_string(text: str, path: str = "value") -> str | pl.Expr:
    """One template string: literal text, a column, or text with columns inserted.

    Parameters
    ----------
    text
        The string from the template.
    path
        Where it sits in the template, for error messages.

    Returns
    -------
    str | pl.Expr
        The literal text (escapes resolved) when it names no column; ``pl.col(name)``
        when it is exactly one placeholder; else a string expression.

    Raises
    ------
    TemplateError
        An empty placeholder, or a ``{{`` that does not start one.

    Examples
    --------
    >>> compile_string("{{ id }}").meta.output_name()
    'id'
    >>> compile_string("no columns here")
    'no columns here'
    """
    pieces: list[str | pl.Expr] = []
    literal: list[str] = []
    columns = 0
    pos = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[pos : match.start()])
        pos = match.end()
        if match.group(0) == "{{{{":
            literal.append("{{")
            continue
        name = match.group(1)
        if name is None:
            msg = (
                f"`{path}`: `{{{{` at character {match.start()} does not start a placeholder "
                f"in {text!r}; write `{{{{column}}}}` for a column, `{{{{{{{{` for a literal "
                '`{{`, or `{"$lit": ...}` for text that is never interpreted'
            )
            raise TemplateError(msg, column=path)
        name = name.strip()
        if not name:
            msg = f"`{path}`: empty placeholder `{match.group(0)}` in {text!r}; name a column"
            raise TemplateError(msg, column=path)
        if literal:
            pieces.append("".join(literal))
            literal = []
        pieces.append(pl.col(name))
        columns += 1
    literal.append(text[pos:])
    rest = "".join(literal)
    if rest:
        pieces.append(rest)
    if columns == 0:
        return rest
    parts = [p for p in pieces if not (isinstance(p, str) and p == "")]
    if len(parts) == 1 and isinstance(parts[0], pl.Expr):
        return parts[0]
    exprs = [pl.lit(p) if isinstance(p, str) else p.cast(pl.String) for p in parts]
    return pl.concat_str(exprs)
