"""Parse batch output files into typed frames: batchframe vs a per-row orjson loop.

    python benchmarks/bench_parse.py                       # 1M chat lines, 100k embedding lines
    python benchmarks/bench_parse.py --rows 100_000 --emb-rows 5_000
    python benchmarks/bench_parse.py --pieces --rows 500_000  # one call vs a job's pieces

Writes shard files (chat: 50,000 lines each, the API's per-batch cap; embeddings:
``--emb-shard-rows``) to a temporary directory, then parses them one at a time, as a job
does, with ``parse_output`` and with the best hand-written loop (``orjson`` per row,
same columns and dtypes), after parsing the first shard once untimed (both ways:
steady state, as in a job's long run; ``--warmup-lines 100`` warms up on 100 lines
only, as before 2026-12-01, so that the first large shard also pays the engines'
one-time growth, ~50 ms; the one-shard runs, ``(1 shard)``, always do: they show a
process's first shard). Prints one line per shard (MB/s, current and peak RSS: the
peak must not grow with the number of shards) and one JSON line per case with the
totals and the ratio to the loop: of wall time (``vs_orjson_loop``: batchframe uses every
core, the loop one) and of CPU time summed over threads (``cpu_vs_orjson_loop``: the
ratio on a machine with one free core).

The main chat files are minified (``orjson``). Three more layouts get ``--layout-shards``
shards each: ``chat-spaced``, written the way the API's files are (``json.dumps``:
``", "`` and ``": "``), ``chat-reordered``, other key orders (``custom_id`` first,
``body`` first in ``response``), which batchframe cannot cut the body out of and
parses whole, and ``chat-tools``, every answer a function call (``tool_calls``), which
batchframe reads into their structure on a second pass over those rows. Before timing, each kind's first shard is parsed both ways and the
frames compared (bodies as JSON values).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from batchframe._results import parse_output
from batchframe._schemas import ok_schema

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"
WORDS = [
    "the",
    "review",
    "is",
    "quite",
    "good",
    "bad",
    "ok",
    "positive",
    "negative",
    "neutral",
    "délicieux",
    "🎉",
    '"quoted"',
    "service",
]


# -- data ----------------------------------------------------------------------------------


def chat_lines(start: int, n: int, rnd: random.Random, layout: str = "minified") -> bytes:
    out = []
    for i in range(start, start + n):
        content = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 12)))
        body = {
            "id": f"chatcmpl-{i:x}",
            "object": "chat.completion",
            "created": 1_711_652_795 + i,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 20 + i % 50,
                "completion_tokens": 2 + i % 9,
                "total_tokens": 22 + i % 50 + i % 9,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": "fp_44709d6fcb",
        }
        if layout == "tools":  # a function call instead of an answer
            message = body["choices"][0]["message"]
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_{i:x}",
                    "type": "function",
                    "function": {
                        "name": "record_sentiment",
                        "arguments": orjson.dumps({"label": content.split()[0]}).decode(),
                    },
                }
            ]
            body["choices"][0]["finish_reason"] = "tool_calls"
        line = {
            "id": f"batch_req_{i:x}",
            "custom_id": f"row-{i}",
            "response": {"status_code": 200, "request_id": f"req_{i:x}", "body": body},
            "error": None,
        }
        if layout == "spaced":
            out.append(json.dumps(line, ensure_ascii=False).encode())
        elif layout == "reordered":
            response = {"body": body, "request_id": f"req_{i:x}", "status_code": 200}
            reordered = {"custom_id": f"row-{i}", "response": response}
            out.append(orjson.dumps({**reordered, "id": f"batch_req_{i:x}", "error": None}))
        else:
            out.append(orjson.dumps(line))
    return b"\n".join(out) + b"\n"


def _layout_lines(start: int, n: int, *, rnd: random.Random, layout: str) -> bytes:
    return chat_lines(start, n, rnd, layout)


def embedding_lines(start: int, n: int, dim: int, pool: list[bytes]) -> bytes:
    # Vectors come from a pool of pre-rendered arrays: parsing cost does not depend on
    # the values, and rendering 150M floats in Python would dominate the run.
    out = []
    for i in range(start, start + n):
        out.append(
            b'{"id":"batch_req_%x","custom_id":"emb-%d","response":{"status_code":200,'
            b'"request_id":"req_%x","body":{"object":"list","data":[{"object":"embedding",'
            b'"index":0,"embedding":%s}],"model":"text-embedding-3-small","usage":'
            b'{"prompt_tokens":%d,"total_tokens":%d}}},"error":null}'
            % (i, i, i, pool[i % len(pool)], 8 + i % 20, 8 + i % 20)
        )
    return b"\n".join(out) + b"\n"


def write_shards(
    folder: Path, name: str, total: int, per: int, make: Callable[[int, int], bytes]
) -> list[Path]:
    paths = []
    for k, start in enumerate(range(0, total, per)):
        path = folder / f"{name}-{k:04d}.jsonl"
        path.write_bytes(make(start, min(per, total - start)))
        paths.append(path)
    return paths


# -- the baseline: best hand-written loop ----------------------------------------------------


def loop_chat(data: bytes, batch_id: str) -> pl.DataFrame:
    cols: dict[str, list[Any]] = {name: [] for name in ok_schema(CHAT)}
    for raw in data.splitlines():
        if not raw.strip():
            continue
        obj = orjson.loads(raw)
        resp, err = obj.get("response"), obj.get("error")
        if err is not None or resp is None or not 200 <= (resp.get("status_code") or 0) < 300:
            continue
        body = resp.get("body") or {}
        choice = (body.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        usage = body.get("usage") or {}
        cols["custom_id"].append(obj["custom_id"])
        cols["batch_id"].append(batch_id)
        cols["request_id"].append(resp.get("request_id"))
        cols["status_code"].append(resp.get("status_code"))
        cols["model"].append(body.get("model"))
        cols["body"].append(orjson.dumps(body).decode())
        cols["content"].append(msg.get("content"))
        cols["refusal"].append(msg.get("refusal"))
        cols["finish_reason"].append(choice.get("finish_reason"))
        cols["tool_calls"].append(msg.get("tool_calls"))
        cols["prompt_tokens"].append(usage.get("prompt_tokens"))
        cols["completion_tokens"].append(usage.get("completion_tokens"))
        cols["total_tokens"].append(usage.get("total_tokens"))
        cols["cached_tokens"].append(
            (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        )
        cols["reasoning_tokens"].append(
            (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
        )
    return pl.DataFrame(cols, schema=ok_schema(CHAT))


def loop_embeddings(data: bytes, batch_id: str, dim: int) -> pl.DataFrame:
    schema = ok_schema(EMB, embedding_dim=dim)
    cols: dict[str, list[Any]] = {name: [] for name in schema}
    for raw in data.splitlines():
        if not raw.strip():
            continue
        obj = orjson.loads(raw)
        resp, err = obj.get("response"), obj.get("error")
        if err is not None or resp is None or not 200 <= (resp.get("status_code") or 0) < 300:
            continue
        body = resp.get("body") or {}
        rest = orjson.dumps({k: v for k, v in body.items() if k != "data"}).decode()
        for j, item in enumerate(body.get("data") or []):
            cols["custom_id"].append(obj["custom_id"])
            cols["index"].append(item.get("index"))
            cols["embedding"].append(item.get("embedding"))
            cols["batch_id"].append(batch_id)
            cols["request_id"].append(resp.get("request_id"))
            cols["status_code"].append(resp.get("status_code"))
            cols["model"].append(body.get("model"))
            cols["body"].append(rest)
            cols["prompt_tokens"].append(
                (body.get("usage") or {}).get("prompt_tokens") if j == 0 else None
            )
    return pl.DataFrame(cols, schema=schema)


# -- measuring -------------------------------------------------------------------------------


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process, in MB.

    The peak is ``VmHWM``: ``getrusage``'s ``ru_maxrss`` survives ``exec``, so in a
    child process it would report the parent's peak too. ``ru_maxrss`` is the fallback
    where there is no ``/proc``.
    """
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def _chat(a: argparse.Namespace, p: Path, d: bytes) -> pl.DataFrame:
    return parse_output(d, endpoint=CHAT, batch_id="b")[0]


def _emb(a: argparse.Namespace, p: Path, d: bytes) -> pl.DataFrame:
    return parse_output(d, endpoint=EMB, batch_id="b", embedding_dim=a.dim)[0]


def _chat_loop(a: argparse.Namespace, p: Path, d: bytes) -> pl.DataFrame:
    return loop_chat(d, "b")


def _emb_loop(a: argparse.Namespace, p: Path, d: bytes) -> pl.DataFrame:
    return loop_embeddings(d, "b", a.dim)


CASES: dict[str, tuple[str, Callable[[argparse.Namespace, Path, bytes], pl.DataFrame]]] = {
    # name: (shard files, parse one shard)
    "chat: batchframe": ("chat", _chat),
    "chat: batchframe (path)": (
        "chat",
        lambda a, p, d: parse_output(p, endpoint=CHAT, batch_id="b")[0],
    ),
    "chat: orjson loop": ("chat", _chat_loop),
    "chat-spaced: batchframe": ("chat-spaced", _chat),
    "chat-spaced: orjson loop": ("chat-spaced", _chat_loop),
    "chat-reordered: batchframe": ("chat-reordered", _chat),
    "chat-reordered: orjson loop": ("chat-reordered", _chat_loop),
    "chat-tools: batchframe": ("chat-tools", _chat),
    "chat-tools: orjson loop": ("chat-tools", _chat_loop),
    "emb: batchframe": ("emb", _emb),
    "emb: orjson loop": ("emb", _emb_loop),
}


def check_same(args: argparse.Namespace, kind: str, path: Path) -> None:
    """batchframe and the loop give the same frame for one shard (bodies as JSON values)."""
    from polars.testing import assert_frame_equal

    data = path.read_bytes()
    ours, loop = (
        CASES[f"{kind}: {who}"][1](args, path, data) for who in ("batchframe", "orjson loop")
    )
    assert_frame_equal(ours.drop("body"), loop.drop("body"))
    for a, b in zip(ours["body"].gather_every(997), loop["body"].gather_every(997), strict=True):
        assert orjson.loads(a) == orjson.loads(b)


def run_case(args: argparse.Namespace) -> None:
    """Parse the shard files of one case, one at a time (runs in its own process)."""
    kind, parse = CASES[args.case]
    paths = sorted(Path(args.dir).glob(f"{kind}-[0-9]*.jsonl"))[: args.limit or None]
    if paths:  # warm up, untimed (see --warmup-lines)
        head = paths[0].read_bytes()
        if args.warmup_lines:
            head = b"\n".join(head.split(b"\n", args.warmup_lines)[: args.warmup_lines]) + b"\n"
        warm = Path(args.dir) / f"warm-{kind}.jsonl"
        warm.write_bytes(head)
        parse(args, warm, head)
        warm.unlink()
    total_mb = total_s = total_cpu = 0.0
    rows = 0
    for k, path in enumerate(paths):
        data = path.read_bytes()
        t0, c0 = time.perf_counter(), time.process_time()
        frame = parse(args, path, data)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        mb = len(data) / 1e6
        total_mb, total_s, rows = total_mb + mb, total_s + dt, rows + len(frame)
        total_cpu += cpu
        del frame, data
        cur, peak = rss_mb()
        if k < 2 or k == len(paths) - 1:
            print(f"  {args.case:24s} shard {k:3d}: {mb:7.1f} MB {dt:6.2f} s {mb / dt:6.0f} MB/s"
                  f"  rss {cur:5.0f} MB  peak {peak:5.0f} MB", flush=True)  # fmt: skip
    cur, peak = rss_mb()
    name = args.case + (f" ({len(paths)} shard)" if args.limit else "")
    print(json.dumps({"case": name, "shards": len(paths), "rows": rows, "mb": round(total_mb, 1),
                      "seconds": round(total_s, 2), "mb_per_s": round(total_mb / total_s, 1),
                      "cpu_seconds": round(total_cpu, 2), "peak_rss_mb": round(peak)}))  # fmt: skip


def run_pieces(args: argparse.Namespace, paths: list[Path]) -> None:
    """Each chat shard parsed in one call and in a job's 4 MB pieces, CPU of each.

    A job's ``record_outcome`` reads an output file with ``read_chunks`` and parses the
    pieces through one DuckDB statement per file (``parse_output_file``; flat memory);
    ``each_piece`` is the path before that, one ``parse_output`` call per piece. All
    include reading the file (the whole call: ``read_bytes``) and are interleaved
    shard by shard, so other load on the machine hits them alike. Also: the CPU of
    ``parse_output(b"")``, the fixed cost every call pays.
    """
    from batchframe._retry import PARSE_CHUNK_BYTES, read_chunks
    from batchframe._storage import Storage

    storage = Storage(str(paths[0].parent))

    def whole(name: str) -> int:
        return len(parse_output(storage.read_bytes(name), endpoint=CHAT, batch_id="b")[0])

    size = args.piece_bytes or PARSE_CHUNK_BYTES

    def each_piece(name: str) -> int:
        return sum(
            len(parse_output(data, endpoint=CHAT, batch_id="b")[0])
            for data in read_chunks(storage, name, size)
        )

    try:  # what a job runs since the one-statement path (one DuckDB statement per file)
        from batchframe._parse import parse_output_file

        def pieces(name: str) -> int:
            ok, _ = parse_output_file(
                lambda: read_chunks(storage, name, size), endpoint=CHAT, batch_id="b"
            )
            return len(ok)
    except ImportError:  # the code before it: one call per piece
        pieces = each_piece

    walls: dict[str, list[float]] = {}

    def cpu(fn: Callable[[], object], how: str = "") -> float:
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        walls.setdefault(how, []).append(time.perf_counter() - w0)
        return time.process_time() - c0

    for _ in range(3):  # warm up: imports, DuckDB's threads, each thread's statements
        whole(paths[0].name), pieces(paths[0].name), each_piece(paths[0].name)
    empty = sorted(cpu(lambda: parse_output(b"", endpoint=CHAT, batch_id="b")) for _ in range(51))
    n_pieces = len(list(read_chunks(storage, paths[0].name, args.piece_bytes or None)))
    fns = {"whole": whole, "pieces": pieces, "each_piece": each_piece}
    totals = dict.fromkeys(fns, 0.0)
    per_shard: dict[str, list[float]] = {how: [] for how in fns}
    for k, path in enumerate(paths):
        order = list(fns)[k % 3 :] + list(fns)[: k % 3]
        for how in order:
            seconds = cpu(functools.partial(fns[how], path.name), how)
            totals[how] += seconds
            per_shard[how].append(seconds)
    mb = sum(p.stat().st_size for p in paths) / 1e6
    median = {how: sorted(v)[len(v) // 2] for how, v in per_shard.items()}
    print(json.dumps({
        "case": "chat: one call vs 4 MB pieces (CPU)", "shards": len(paths),
        "mb_per_shard": round(mb / len(paths), 1), "pieces_per_shard": n_pieces,
        "cpu_ms_per_shard_whole": round(1000 * median["whole"], 1),
        "cpu_ms_per_shard_pieces": round(1000 * median["pieces"], 1),
        "cpu_ms_per_shard_one_call_per_piece": round(1000 * median["each_piece"], 1),
        "wall_ms_per_shard": {h: round(1000 * sorted(walls[h])[len(walls[h]) // 2], 1) for h in fns},
        "pieces_vs_whole": round(totals["pieces"] / totals["whole"], 3),
        "one_call_per_piece_vs_whole": round(totals["each_piece"] / totals["whole"], 3),
        "empty_call_cpu_ms_median": round(1000 * empty[len(empty) // 2], 2),
        "load_1min": round(os.getloadavg()[0], 2),
    }))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000, help="chat output lines")
    ap.add_argument("--shard-rows", type=int, default=50_000, help="chat lines per shard file")
    ap.add_argument("--emb-rows", type=int, default=100_000, help="embedding output lines")
    ap.add_argument(
        "--emb-shard-rows", type=int, default=10_000, help="embedding lines per shard file"
    )
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument(
        "--layout-shards", type=int, default=2, help="chat shards per other layout (0: none)"
    )
    ap.add_argument("--dir", help="where to write shard files (default: a temporary directory)")
    ap.add_argument(
        "--pieces",
        action="store_true",
        help="only: chat shards parsed in one call vs in a job's 4 MB pieces (CPU)",
    )
    ap.add_argument("--piece-bytes", type=int, default=0, help="with --pieces (default 4 MB)")
    ap.add_argument(
        "--warmup-lines",
        type=int,
        default=0,
        help="lines of the first shard each case parses untimed before timing (0: all of it, "
        "i.e. steady state: the first large parse of a process grows the engines' memory "
        "pools and prepares their statements; 100 was the default before 2026-12-01)",
    )
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        run_case(args)
        return

    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench_parse-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        rnd = random.Random(0)
        t0 = time.perf_counter()
        if args.pieces:
            make = functools.partial(chat_lines, rnd=rnd)
            run_pieces(args, write_shards(folder, "chat", args.rows, args.shard_rows, make))
            return
        chat = write_shards(
            folder, "chat", args.rows, args.shard_rows, lambda s, n: chat_lines(s, n, rnd)
        )
        pool = [
            orjson.dumps([float(f"{rnd.gauss(0, 0.03):.10f}") for _ in range(args.dim)])
            for _ in range(64)
        ]
        emb = write_shards(
            folder,
            "emb",
            args.emb_rows,
            args.emb_shard_rows,
            lambda s, n: embedding_lines(s, n, args.dim, pool),
        )
        layouts = {
            layout: write_shards(
                folder,
                f"chat-{layout}",
                min(args.rows, args.layout_shards * args.shard_rows),
                args.shard_rows,
                functools.partial(_layout_lines, rnd=rnd, layout=layout),
            )
            for layout in ("spaced", "reordered", "tools")
        }
        files = {"chat": chat, "emb": emb, **{f"chat-{k}": v for k, v in layouts.items()}}
        print(f"generated {sum(map(len, files.values()))} shard files in "
              f"{time.perf_counter() - t0:.1f} s ({folder})")  # fmt: skip
        for kind, paths in files.items():
            if paths:
                check_same(args, kind, paths[0])
        # Each case runs in a fresh process, so its peak RSS is its own.
        runs = [(case, 0) for case, (kind, _) in CASES.items() if files[kind]]
        runs += [("chat: batchframe", 1)] if len(chat) > 1 else []
        runs += [("emb: batchframe", 1)] if len(emb) > 1 else []
        load_before = os.getloadavg()[0]
        results = []
        for case, limit in runs:
            # The one-shard runs stay cold (100 lines of warm-up): a process's first shard.
            warmup = args.warmup_lines if limit != 1 else 100
            cmd = [sys.executable, __file__, "--dir", str(folder), "--dim", str(args.dim),
                   "--warmup-lines", str(warmup)]  # fmt: skip
            out = subprocess.run([*cmd, "--case", case, "--limit", str(limit)], check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            *progress, last = out.strip().splitlines()
            print("\n".join(progress))
            results.append(json.loads(last))
        loops = {r["case"].split(":")[0]: r for r in results if "loop" in r["case"]}
        # Other work on the machine skews the wall-time ratios (batchframe uses every
        # core, the loop one): the 1-minute load average, before and after the runs.
        print(f"\nload average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
              f"({os.cpu_count()} cores)")  # fmt: skip
        for r in results:
            loop = loops[r["case"].split(":")[0]]
            r["vs_orjson_loop"] = round(r["mb_per_s"] / loop["mb_per_s"], 2)
            # CPU time of all threads: what the speed-up would be on one free core.
            r["cpu_vs_orjson_loop"] = round(
                loop["cpu_seconds"] / loop["mb"] / (r["cpu_seconds"] / r["mb"]), 2
            )
            print(json.dumps(r))
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
