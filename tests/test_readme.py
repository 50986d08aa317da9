"""Every code block in the README runs, as written (or is checked against what CI runs).

* ``python`` blocks each run in a fresh interpreter, in an empty directory, as a reader
  would paste them. A block whose first line is ``# continues the block above`` or
  ``# continues the block under "<heading>"`` runs after the block it names (and whatever
  that one continues), in the same process.
* ``json`` blocks parse; the body template is the one the CLI session writes.
* ``sql`` blocks run in DuckDB against the database the Python block before them writes.
* ``bash`` blocks: the CLI session runs for real, from an empty directory (the local
  server's port is swapped for a free one); ``pip install`` lines must name extras and
  dependency groups pyproject declares; the lint, type-check and test lines must be the
  ones ``.ci/run`` runs.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import polars as pl
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def _python_blocks() -> list[tuple[str, str]]:
    """``(heading, code)`` of every python block, the heading being the nearest above it."""
    out = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M):
        if match.group(1) != "python":
            continue
        headings = re.findall(r"^#+ (.+)$", README[: match.start()], flags=re.M)
        out.append((headings[-1].strip() if headings else "", match.group(2)))
    return out


PYTHON = _python_blocks()
_CONTINUES = re.compile(r'^# continues the block (?:above|under "(?P<heading>[^"]+)")')


def _program(i: int) -> str:
    """Block ``i`` with the blocks it continues before it."""
    code = PYTHON[i][1]
    match = _CONTINUES.match(code)
    if match is None:
        return code
    heading = match.group("heading")
    if heading is None:
        return _program(i - 1) + "\n" + code
    first = next(j for j, (h, _) in enumerate(PYTHON) if h == heading)
    assert first < i, f"block {i} continues a block below it ({heading!r})"
    return _program(first) + "\n" + code


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _cli() -> list[str]:
    """The ``batchframe`` console script next to this interpreter, or ``python -m``."""
    script = Path(sys.executable).parent / "batchframe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "batchframe"]


def test_every_block_has_a_known_language():
    assert BLOCKS
    assert {kind for kind, _ in BLOCKS} <= {"python", "bash", "json", "sql", "text"}


@pytest.fixture(scope="module")
def block_runs(tmp_path_factory: pytest.TempPathFactory) -> list[subprocess.CompletedProcess[str]]:
    """Every python block, each in its own fresh interpreter and empty directory.

    They run four at a time (most of their time is spent waiting for the local server),
    so the file's share of the default suite stays small.
    """
    dirs = [tmp_path_factory.mktemp(f"python-{i}") for i in range(len(PYTHON))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda i: _run_python(_program(i), dirs[i]), range(len(PYTHON))))


@pytest.mark.parametrize("i", range(len(PYTHON)), ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_block_runs_in_a_fresh_process(
    i: int, block_runs: list[subprocess.CompletedProcess[str]]
) -> None:
    heading = PYTHON[i][0]
    done = block_runs[i]
    assert done.returncode == 0, (
        f"README block {i} (under {heading!r}) failed:\n{done.stderr[-3000:]}"
    )
    assert done.stdout.strip(), f"README block {i} prints nothing"  # examples show output


def test_blocks_that_continue_say_so() -> None:
    """A block using a name it does not define must continue the block defining it."""
    for i, (_, code) in enumerate(PYTHON):
        if _CONTINUES.match(code) is None:
            assert code.lstrip().startswith(("import", "from")), f"block {i}: {code[:80]!r}"


def test_json_blocks_parse():
    for block in _blocks("json"):
        json.loads(block)


def test_sql_blocks_run(tmp_path: Path) -> None:
    (block,) = _blocks("sql")
    # The database the SQL reads is written by the python block right before it.
    before = README[: README.index("```sql\n" + block)]
    (maker,) = [i for i, (_, code) in enumerate(PYTHON) if code in before][-1:]
    assert "readme.duckdb" in PYTHON[maker][1] and "readme.duckdb" in block
    done = _run_python(_program(maker), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with duckdb.connect(str(tmp_path / "readme.duckdb"), read_only=True) as con:
        statements = [s.strip() for s in block.split(";") if s.strip()]
        assert len(statements) == 3
        ((n_ok,),) = con.sql("SELECT count(*) FROM reviews").fetchall()
        ((n_failed,),) = con.sql("SELECT count(*) FROM reviews_failed").fetchall()
        assert n_ok + n_failed == 5 and n_ok > 0
        by_label = con.sql(statements[0]).fetchall()
        assert sum(n for _, n, _ in by_label) == n_ok
        failures = con.sql(statements[1]).fetchall()
        assert sum(n for *_, n in failures) == n_failed
        nearest = con.sql(statements[2]).fetchall()
        assert nearest[0][0] in ("q1", "d2")  # the query and its identical twin come first
        assert nearest[0][1] == pytest.approx(1.0)


def test_bash_cli_run_against_local_server(tmp_path):
    (block,) = [b for b in _blocks("bash") if "batchframe serve" in b]
    (template,) = _blocks("json")
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
    # The session wrote its own inputs; its template is the one the README documents.
    assert json.loads((tmp_path / "chat.json").read_text()) == json.loads(template)
    rows = pl.read_csv(tmp_path / "reviews.csv").height
    assert rows == 3
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
    groups = set(pyproject["dependency-groups"])
    setup = ("python3 -m venv .venv", ". .venv/bin/activate", "python -m pip install --upgrade pip")
    ci = (ROOT / ".ci" / "run").read_text()
    for block in _blocks("bash"):
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if not command or "batchframe serve" in block:
                continue
            for part in (p.strip() for p in command.split("&&")):
                if part in setup:
                    continue
                if part.startswith("pip install"):
                    named = re.findall(r"\.\[(\w+)\]", part)
                    assert set(named) <= extras, part
                    assert set(re.findall(r"--group (\w+)", part)) <= groups, part
                elif part.startswith(("ruff", "mypy", "pytest")):
                    assert part.split()[0] in ci, part
                elif part.startswith("python benchmarks/"):
                    script = ROOT / part.split()[1]
                    assert script.exists(), part
                else:
                    assert part.startswith("batchframe demo"), f"unchecked README command: {part}"
    assert any(line.startswith("pytest") for line in ci.splitlines())  # the README's tests
    assert shutil.which("bash")
