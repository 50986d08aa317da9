"""Every code block in the README runs, as written (or is checked against what CI runs).

* ``python`` blocks run in order in one namespace.
* ``json`` blocks parse; the body template among them drives the CLI run below.
* ``sql`` blocks run in DuckDB over tables made by real jobs on the local server.
* ``bash`` blocks: ``batchframe ...`` lines run for real (the local server's port is
  swapped for a free one); ``pip install`` lines must name extras pyproject declares; the
  lint, type-check and test lines must be the ones ``.ci/run`` runs.
* ``text`` blocks are synopses and diagrams, not code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl
import pytest
from pydantic import BaseModel

import batchframe as bf

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def _cli() -> list[str]:
    """The ``batchframe`` console script next to this interpreter, or ``python -m``."""
    script = Path(sys.executable).parent / "batchframe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "batchframe"]


def test_every_block_has_a_known_language():
    assert BLOCKS
    assert {kind for kind, _ in BLOCKS} <= {"python", "bash", "json", "sql", "text"}


def test_python_blocks_run(tmp_path, monkeypatch, memfs, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for i, block in enumerate(_blocks("python")):
        try:
            exec(compile(block, f"README.md:python-block-{i}", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the failure message is the point
            pytest.fail(f"README python block {i} failed: {e!r}\n{block}")
    assert capsys.readouterr().out  # the examples print what they show


def test_json_blocks_parse():
    for block in _blocks("json"):
        json.loads(block)


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float


def test_sql_blocks_run(tmp_path):
    texts = ["loved it", "broke at once", "it is fine", "great value", "never again"]
    reviews = pl.DataFrame({"id": range(len(texts)), "text": texts})
    docs = pl.DataFrame({"doc": ["q1", "d1", "d2", "d3"], "text": ["a", "b", "a", "c"]})
    with bf.LocalBatchServer(failure_rate=0.2, seed=3) as server:
        labelled = bf.run(
            reviews,
            str(tmp_path / "reviews"),
            endpoint="/v1/chat/completions",
            body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), response_format=Sentiment),
            custom_id="id",
            client=server.client(),
            poll_interval=0.05,
            max_attempts=1,
        )
        embedded = bf.run(
            docs,
            str(tmp_path / "docs"),
            endpoint="/v1/embeddings",
            body=bf.embeddings_body("text-embedding-3-small", input=pl.col("text"), dimensions=8),
            custom_id="doc",
            client=server.client(),
            poll_interval=0.05,
        )
    with duckdb.connect(str(tmp_path / "readme.duckdb")) as con:
        labelled.to_duckdb(con, table="reviews")
        embedded.to_duckdb(con, table="docs")
        (block,) = _blocks("sql")
        statements = [s.strip() for s in block.split(";") if s.strip()]
        assert len(statements) == 3
        by_label = con.sql(statements[0]).fetchall()
        assert sum(n for _, n, _ in by_label) == labelled.ok.height
        failures = con.sql(statements[1]).fetchall()
        assert sum(n for *_, n in failures) == labelled.failed.height
        nearest = con.sql(statements[2]).fetchall()
        assert nearest[0][0] in ("q1", "d2")  # the query and its identical twin come first
        assert nearest[0][1] == pytest.approx(1.0)


def test_bash_cli_run_against_local_server(tmp_path):
    (block,) = [b for b in _blocks("bash") if "batchframe serve" in b]
    (template,) = _blocks("json")
    (tmp_path / "chat.json").write_text(template)
    rows = 30
    pl.DataFrame(
        {
            "review_id": range(rows),
            "product": ["kettle", "lamp", "desk"] * (rows // 3),
            "text": [f'review {i}: "ok"\nfine' for i in range(rows)],
        }
    ).write_csv(tmp_path / "reviews.csv")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = block.replace("8000", str(port)).replace("batchframe ", '"${BF[@]}" ')
    bf_cmd = " ".join(f"'{part}'" for part in _cli())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    # The server started with `&` is stopped when the script ends.
    full = f"set -e\nBF=({bf_cmd})\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n{script}"
    done = subprocess.run(
        ["bash", "-c", full], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with duckdb.connect(str(tmp_path / "reviews.duckdb"), read_only=True) as con:
        ((ok,),) = con.sql("SELECT count(*) FROM reviews").fetchall()
        ((failed,),) = con.sql("SELECT count(*) FROM reviews_failed").fetchall()
    assert ok + failed == rows
    assert (tmp_path / "out" / "reviews.parquet").exists()
    assert "OPENAI_API_KEY" not in (tmp_path / "jobs" / "reviews" / "manifest.json").read_text()


def test_bash_demo_command_runs(tmp_path):
    (block,) = [b for b in _blocks("bash") if "batchframe demo" in b]
    assert block.strip() == "pip install -e . && batchframe demo"
    done = subprocess.run(
        [*_cli(), "demo", "--rows", "300", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "300" in done.stdout and (tmp_path / "reviews.duckdb").exists()


def test_bash_install_lint_and_test_lines_match_the_project():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    ci = (ROOT / ".ci" / "run").read_text()
    for block in _blocks("bash"):
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if not command or "batchframe serve" in block:
                continue
            for part in (p.strip() for p in command.split("&&")):
                if part.startswith("pip install"):
                    named = re.findall(r"\.\[(\w+)\]", part)
                    assert set(named) <= extras, part
                elif part.startswith(("ruff", "mypy", "pytest")):
                    assert part.split()[0] in ci, part
                elif part.startswith("python benchmarks/"):
                    script = ROOT / part.split()[1]
                    assert script.exists(), part
                else:
                    assert part.startswith("batchframe demo"), f"unchecked README command: {part}"
    assert "pytest" in ci.splitlines()[-1]  # CI runs the README's test command
    assert shutil.which("bash")
