"""Every Python code block in the README runs, in order, as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples():
    assert len(_blocks()) >= 1


def test_readme_python_blocks_run(tmp_path, monkeypatch, memfs, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for i, block in enumerate(_blocks()):
        try:
            exec(compile(block, f"README.md:python-block-{i}", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the failure message is the point
            pytest.fail(f"README python block {i} failed: {e!r}\n{block}")
    assert capsys.readouterr().out  # the examples print what they show
