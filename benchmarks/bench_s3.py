"""S3 requests of a job whose root is ``s3://``, counted by the S3 server itself.

A moto server on 127.0.0.1 is wrapped in a WSGI middleware that counts every HTTP
request it receives (method and key), so the figures are real requests from any
process, not calls seen inside fsspec. A 20,000-row job in 10 shards (2,000 requests
each) runs against a local batch server (no failures, so no retry attempts) from
``BatchJob.create`` to ``collect``; the batch API's polling never touches S3, so the
count is the job's storage traffic alone.

Prints one JSON object: requests in total and per shard, per phase and per kind
(``GET manifest.json``, ``PUT *.jsonl``, ...).

Run: ``python benchmarks/bench_s3.py [--rows 20000] [--shards 10]``.
"""

from __future__ import annotations

import argparse
import collections
import logging
import re
import socket
import threading
from typing import Any

import orjson
import polars as pl

import batchframe as bf


class CountingMotoServer:
    """A moto S3 server on loopback that counts the HTTP requests it serves."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        app = DomainDispatcherApplication(create_backend_app)
        self.requests: list[tuple[str, str]] = []
        self._mutex = threading.Lock()

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            if not environ.get("PATH_INFO", "").startswith("/moto-api"):
                query = environ.get("QUERY_STRING", "")
                with self._mutex:
                    self.requests.append(
                        (environ["REQUEST_METHOD"], environ.get("PATH_INFO", "") + "?" + query)
                    )
            return app(environ, start_response)

        self._server = make_server(
            "127.0.0.1", port, counting, True, request_handler=MotoRequestHandler
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def take(self) -> list[tuple[str, str]]:
        """Return the requests counted so far and start counting afresh."""
        with self._mutex:
            out, self.requests = self.requests, []
        return out

    def stop(self) -> None:
        """Shut the server down."""
        self._server.shutdown()
        self._thread.join()


def _kind(method: str, target: str) -> str:
    path, _, query = target.partition("?")
    parts = path.split("/")
    # The folder under the job root too (shards/, outputs/, ok/, failed/), not the root.
    name = "/".join(parts[-2:]) if len(parts) > 4 else (parts[-1] or "/")
    name = re.sub(r"^\.tmp-[0-9a-f]+-", ".tmp-*-", name)
    name = re.sub(r"\d+", "N", name)
    extra = "?" + ",".join(sorted(k.split("=")[0] for k in query.split("&"))) if query else ""
    return f"{method} {name}{extra}"


def main() -> None:
    """Run the benchmark and print its JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=10)
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = CountingMotoServer()
    try:
        boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id="x",
            aws_secret_access_key="y",
            region_name="us-east-1",
        ).create_bucket(Bucket="jobs")
        server.take()
        opts = {"client_kwargs": {"endpoint_url": server.endpoint}, "key": "x", "secret": "y"}
        n = args.rows
        df = pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"t {i}" for i in range(n)]})
        requests = bf.build_requests(
            df,
            endpoint="/v1/chat/completions",
            body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
            custom_id="id",
        )
        phases: dict[str, list[tuple[str, str]]] = {}
        root = "s3://jobs/bench"
        limits = bf.BatchLimits(max_requests=-(-n // args.shards))
        with bf.LocalBatchServer() as api:
            job = bf.BatchJob.create(
                requests, root, client=api.client(), storage_options=opts, limits=limits
            )
            phases["create"] = server.take()
            job.wait(poll_interval=0.05, progress=False)
            phases["wait"] = server.take()
            res = job.collect()
            phases["collect"] = server.take()
            job.close()
            phases["close"] = server.take()
            n_shards = len({r.shard for r in job._m.records})
        assert res.ok.height == n, res.ok.height
        every = [r for reqs in phases.values() for r in reqs]
        kinds = collections.Counter(_kind(m, t) for m, t in every)
        print(
            orjson.dumps(
                {
                    "label": args.label,
                    "rows": n,
                    "shards": n_shards,
                    "requests": len(every),
                    "per_shard": round(len(every) / n_shards, 1),
                    "phases": {k: len(v) for k, v in phases.items()},
                    "by_method": dict(collections.Counter(m for m, _ in every)),
                    "by_kind": dict(kinds.most_common()),
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
