"""BatchJob and bf.run against the local server, through the real openai client."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

import orjson
import polars as pl
import polars.testing
import pytest

import batchframe as bf
from batchframe._api import BatchAPI, RetryPolicy
from batchframe._manifest import MANIFEST_FILE
from batchframe._storage import Storage

POLL = 0.02

BODIES: dict[str, Any] = {
    "/v1/chat/completions": bf.chat_body("gpt-4o-mini", user=pl.col("text")),
    "/v1/responses": bf.responses_body("gpt-4o-mini", input=pl.col("text")),
    "/v1/embeddings": bf.embeddings_body(
        "text-embedding-3-small", input=pl.col("text"), dimensions=8
    ),
    "/v1/completions": bf.completions_body("gpt-3.5-turbo-instruct", prompt=pl.col("text")),
    "/v1/moderations": bf.moderations_body(input=pl.col("text")),
    "/v1/images/generations": bf.image_body("gpt-image-1", prompt=pl.col("text")),
    "/v1/images/edits": bf.image_edit_body(
        "gpt-image-1", prompt=pl.col("text"), images="https://example.com/a.png"
    ),
}


def frame(n: int, prefix: str = "row") -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [f"{prefix}-{i}" for i in range(n)], "text": [f"text number {i}" for i in range(n)]}
    )


def requests_for(
    n: int, endpoint: str = "/v1/chat/completions", prefix: str = "row"
) -> bf.Requests:
    return bf.build_requests(
        frame(n, prefix), endpoint=endpoint, body=BODIES[endpoint], custom_id="id"
    )


def run_kwargs(server: bf.LocalBatchServer, **extra: Any) -> dict[str, Any]:
    """``bf.run`` arguments for a chat job on ``server``, keyed by the ``id`` column."""
    return {
        "endpoint": "/v1/chat/completions",
        "body": BODIES["/v1/chat/completions"],
        "custom_id": "id",
        "client": server.client(),
        "poll_interval": POLL,
        **extra,
    }


def assert_ledger(results: bf.BatchResults, ids: list[str]) -> None:
    ok_ids = set(results.ok["custom_id"].to_list())
    failed_ids = results.failed["custom_id"].to_list()
    assert len(failed_ids) == len(set(failed_ids))
    assert ok_ids.isdisjoint(failed_ids)
    assert ok_ids | set(failed_ids) == set(ids)
    if results.endpoint != "/v1/embeddings":
        assert len(results.ok) + len(results.failed) == len(ids)


def job_batches(server: bf.LocalBatchServer, job: bf.BatchJob) -> list[dict[str, Any]]:
    return [
        b for b in server.batches() if (b.get("metadata") or {}).get("batchframe_job") == job.job_id
    ]


def assert_one_batch_per_attempt(server: bf.LocalBatchServer, job: bf.BatchJob) -> None:
    keys = Counter(
        (
            b["metadata"]["batchframe_shard"],
            b["metadata"]["batchframe_attempt"],
            b["metadata"]["batchframe_submission"],
        )
        for b in job_batches(server, job)
    )
    assert keys and max(keys.values()) == 1, keys
    # Only token_limit_exceeded batches may share a shard attempt (resubmissions).
    live = Counter(
        (b["metadata"]["batchframe_shard"], b["metadata"]["batchframe_attempt"])
        for b in job_batches(server, job)
        if not (
            b["status"] == "failed" and b["errors"]["data"][0]["code"] == "token_limit_exceeded"
        )
    )
    assert max(live.values()) == 1, live


@pytest.fixture
def server() -> Any:
    with bf.LocalBatchServer(seed=7) as s:
        yield s


@pytest.mark.parametrize("endpoint", list(BODIES))
def test_happy_path_every_endpoint(
    server: bf.LocalBatchServer, tmp_path: Any, endpoint: str
) -> None:
    req = requests_for(12, endpoint)
    root = str(tmp_path / "job")
    with bf.BatchJob.create(
        req, root, client=server.client(), limits=bf.BatchLimits(max_requests=5)
    ) as job:
        job.submit()
        job.wait(poll_interval=POLL)
        assert job.is_settled
        results = job.collect()
        status = job.status()
    assert_ledger(results, req.frame["custom_id"].to_list())
    assert results.failed.height == 0
    assert status["status"].to_list() == ["completed"] * 3
    assert status["settled"].all()
    assert results.batches is not None and results.batches.height == 3
    assert sorted((tmp_path / "job" / "outputs").iterdir()) != []
    manifest = orjson.loads((tmp_path / "job" / MANIFEST_FILE).read_bytes())
    assert manifest["format_version"] == 1
    assert not (tmp_path / "job" / "lock.json").exists()
    assert_one_batch_per_attempt(server, job)
    if endpoint == "/v1/embeddings":
        assert results.ok.schema["embedding"] == pl.Array(pl.Float32, 8)


def test_faults_settle_every_row(tmp_path: Any) -> None:
    req = requests_for(200)
    with bf.LocalBatchServer(api_error_rate=0.2, failure_rate=0.05, seed=3) as server:
        job = bf.BatchJob.create(
            req, str(tmp_path / "j"), client=server.client(), limits=bf.BatchLimits(max_requests=25)
        )
        with job:
            job.wait(poll_interval=POLL)
            results = job.collect()
            status = job.status()
        assert_one_batch_per_attempt(server, job)
        faults = [c for c in server.calls if c.fault == "api_error_rate"]
    assert faults  # the client really met 429s and 500s
    assert_ledger(results, req.frame["custom_id"].to_list())
    assert (status["attempt"] > 0).any()  # some rows were retried in child shards
    # With 3 attempts at 5 % failure almost every row succeeds; failures are final ones.
    assert results.failed.height < 3
    assert (results.failed["attempts"] == 3).all()
    assert (results.ok.height + results.failed.height) == 200


def test_expiry_keeps_finished_rows(tmp_path: Any) -> None:
    req = requests_for(30)
    with (
        bf.LocalBatchServer(
            completion_window_seconds=0.4, requests_per_second=25, seed=1
        ) as server,
        bf.BatchJob.create(req, str(tmp_path / "j"), client=server.client(), max_attempts=2) as job,
    ):
        job.wait(poll_interval=POLL)
        results = job.collect()
        status = job.status()
    assert_ledger(results, req.frame["custom_id"].to_list())
    assert status["status"].to_list() == ["expired", "expired"]
    assert 0 < results.ok.height < 30
    assert results.failed.height > 0
    assert set(results.failed["stage"]) == {"expired"}
    assert (results.failed["attempts"] == 2).all()
    assert results.failed["retryable"].all()


def test_cancel_keeps_finished_rows(tmp_path: Any) -> None:
    req = requests_for(60)
    with bf.LocalBatchServer(requests_per_second=30, seed=2) as server:
        job = bf.BatchJob.create(
            req,
            str(tmp_path / "j"),
            client=server.client(),
            limits=bf.BatchLimits(max_requests=20),
            max_in_flight=2,
        )
        with job:
            job.submit()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                job.refresh()
                if job.status()["completed"].sum() >= 5:
                    break
                time.sleep(POLL)
            job.cancel(poll_interval=POLL)
            assert job.is_cancelled and job.is_settled
            job.submit()  # a cancelled job submits nothing
            results = job.collect()
            status = job.status()
        assert len(job_batches(server, job)) == 2
    assert_ledger(results, req.frame["custom_id"].to_list())
    assert results.ok.height >= 5
    assert set(results.failed["stage"]) == {"cancelled"}
    assert not results.failed["retryable"].any()
    assert status["status"].to_list() == ["cancelled"] * 3
    assert status["batch_id"].null_count() == 1  # the third shard never ran


def _tle_batches(server: bf.LocalBatchServer, job: bf.BatchJob) -> list[dict[str, Any]]:
    return [
        b
        for b in job_batches(server, job)
        if b["status"] == "failed" and b["errors"]["data"][0]["code"] == "token_limit_exceeded"
    ]


@pytest.mark.parametrize("known", [True, False])
def test_queue_scheduling(tmp_path: Any, known: bool) -> None:
    req = bf.build_requests(
        frame(80),
        endpoint="/v1/chat/completions",
        body=BODIES["/v1/chat/completions"],
        custom_id="id",
        tokenizer="estimate",
    )
    limits = bf.BatchLimits(max_requests=10)
    per_shard = int(req.plan(limits)["est_tokens"].max())  # type: ignore[arg-type]
    limit = int(per_shard * 2.5)
    # Batches stay queued a while, so a job that does not know the limit surely meets it.
    with bf.LocalBatchServer(
        queue_token_limit=limit, requests_per_second=20, validation_seconds=0.5, seed=4
    ) as server:
        job = bf.BatchJob.create(
            req,
            str(tmp_path / "j"),
            client=server.client(),
            limits=limits,
            queue_token_limit=limit if known else None,
        )
        with job:
            job.wait(poll_interval=POLL)
            results = job.collect()
        tle = _tle_batches(server, job)
        assert_one_batch_per_attempt(server, job)
        if tle:  # resubmitted from the same input file
            by_shard = {
                (b["metadata"]["batchframe_shard"]): b["input_file_id"]
                for b in job_batches(server, job)
                if b["status"] == "completed"
            }
            assert all(
                by_shard[b["metadata"]["batchframe_shard"]] == b["input_file_id"] for b in tle
            )
    assert_ledger(results, req.frame["custom_id"].to_list())
    assert results.failed.height == 0  # queue refusals are never row failures
    assert job.token_limit_failures == len(tle)
    if known:
        assert tle == []
    else:
        assert tle  # the job had to learn the limit


def test_lost_create_response_is_adopted(tmp_path: Any) -> None:
    req = requests_for(10)
    with bf.LocalBatchServer(seed=5) as server:
        # The SDK would retry a 500 by itself and create a second batch; batchframe must not.
        server.fail_next("POST", "/v1/batches", status=500, after=True)
        with bf.BatchJob.create(
            req, str(tmp_path / "j"), client=server.client(max_retries=5)
        ) as job:
            job.wait(poll_interval=POLL)
            results = job.collect()
        posts = [c for c in server.calls if c.method == "POST" and c.path == "/v1/batches"]
        assert len(posts) == 1
        assert len(server.batches_created()) == 1
    assert results.ok.height == 10


def test_failed_validation_is_final(tmp_path: Any) -> None:
    req = requests_for(12)
    with (
        bf.LocalBatchServer(max_requests_per_file=5, seed=6) as server,
        bf.BatchJob.create(
            req, str(tmp_path / "j"), client=server.client(), limits=bf.BatchLimits(max_requests=6)
        ) as job,
    ):
        job.wait(poll_interval=POLL)
        results = job.collect()
    assert_ledger(results, req.frame["custom_id"].to_list())
    assert results.ok.height == 0
    assert set(results.failed["stage"]) == {"batch"}
    assert set(results.failed["error_code"]) == {"too_many_tasks"}
    assert (results.failed["attempts"] == 1).all()


def test_api_key_never_written(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-test-DO-NOT-LEAK-0123456789abcdef"
    wrong = "sk-wrong-ALSO-SECRET-9876543210fedcba"
    req = requests_for(20)
    root = tmp_path / "j"
    errors: list[str] = []
    with (
        caplog.at_level(logging.DEBUG),
        bf.LocalBatchServer(api_key=key, api_error_rate=0.3, failure_rate=0.1, seed=8) as server,
    ):
        with bf.BatchJob.create(
            req, str(root), client=server.client(), limits=bf.BatchLimits(max_requests=7)
        ) as job:
            job.wait(poll_interval=POLL)
            text = (
                repr(job) + job._repr_html_() + repr(job.collect()) + str(job.status().to_dicts())
            )
        with bf.BatchJob.open(
            str(root), client=bf._api.make_client(server.base_url, api_key=wrong)
        ) as job2:
            job2._m.records[0].status = "in_progress"  # force a poll with the wrong key
            try:
                job2.refresh()
            except bf.APIError as exc:
                errors.append(str(exc) + repr(exc))
            job2._m.records[0].status = "completed"
    assert errors and "401" in errors[0]
    written = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    logs = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in (key, wrong):
        for part in (secret, secret[-12:]):
            assert part.encode() not in written
            assert part not in logs
            assert part not in text
            assert part not in errors[0]
    api = BatchAPI(bf._api.make_client("http://127.0.0.1:9/v1", api_key=key))
    assert key not in repr(api) and key not in str(vars(api).get("retry"))


def test_run_resumes_and_refuses_other_requests(server: bf.LocalBatchServer, tmp_path: Any) -> None:
    root = str(tmp_path / "j")
    kwargs = run_kwargs(server, limits=bf.BatchLimits(max_requests=4))
    first = bf.run(frame(10), root, **kwargs)
    created = [b["id"] for b in server.batches_created()]
    n_files = len(server.files())
    assert len(created) == 3
    n_calls = len(server.calls)
    again = bf.run(frame(10), root, **kwargs)
    # Resumed: not one batch or file created, nothing paid twice.
    assert [b["id"] for b in server.batches_created()] == created
    assert len(server.files()) == n_files
    assert not [c for c in server.calls[n_calls:] if c.method == "POST"]
    pl.testing.assert_frame_equal(first.ok, again.ok)
    pl.testing.assert_frame_equal(first.failed, again.failed)
    assert first.batches is not None and again.batches is not None
    pl.testing.assert_frame_equal(first.batches, again.batches)
    with pytest.raises(bf.JobExistsError, match="other requests"):
        bf.run(frame(11), root, **kwargs)
    with pytest.raises(bf.JobExistsError, match=r"BatchJob\.open"):
        bf.BatchJob.create(requests_for(3), root, client=server.client())
    with pytest.raises(bf.JobNotFoundError, match="no batchframe job"):
        bf.BatchJob.open(str(tmp_path / "nothing"))


def test_run_resumes_a_job_whose_manifest_has_the_earlier_fingerprint(
    server: bf.LocalBatchServer, tmp_path: Any
) -> None:
    # A job made before requests kept their lines stored the column-wise fingerprint;
    # resuming it must not be mistaken for other requests (which would mean paying twice).
    root = str(tmp_path / "j")
    kwargs = run_kwargs(server)
    first = bf.run(frame(5), root, **kwargs)
    storage = Storage(root)
    manifest = orjson.loads(storage.read_bytes(MANIFEST_FILE))
    manifest["fingerprint"] = requests_for(5)._columns_fingerprint()
    assert manifest["fingerprint"] != requests_for(5).fingerprint
    storage.write_bytes(MANIFEST_FILE, orjson.dumps(manifest))
    created = len(server.batches_created())
    again = bf.run(frame(5), root, **kwargs)
    assert len(server.batches_created()) == created
    pl.testing.assert_frame_equal(first.ok, again.ok)
    with pytest.raises(bf.JobExistsError, match="other requests"):
        bf.run(frame(6), root, **kwargs)


def test_run_accepts_every_create_and_wait_option() -> None:
    import inspect

    run = inspect.signature(bf.run).parameters
    create = inspect.signature(bf.BatchJob.create).parameters
    wait = inspect.signature(bf.BatchJob.wait).parameters
    build = inspect.signature(bf.build_requests).parameters
    wanted = (
        [n for n in create if n not in ("requests", "root")]
        + [n for n in wait if n != "self"]
        + [n for n in build if n != "frame"]
    )
    for name in wanted:
        assert name in run, name
        assert run[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert list(run)[:2] == ["frame", "root"]
    defaults = {**{n: p.default for n, p in create.items()}, **wait, **build}
    for name in ("limits", "client", "storage_options", "metadata", "executor", "break_lock"):
        assert run[name].default == defaults[name], name


def test_run_after_a_crash_takes_over_the_dead_lock(
    server: bf.LocalBatchServer, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import subprocess
    import sys

    from batchframe._manifest import LOCK_FILE

    root = tmp_path / "j"
    kwargs = run_kwargs(server)
    with bf.BatchJob.create(requests_for(6), str(root), client=server.client()) as job:
        job.submit()
    # The process that drove it died without releasing its lock (SIGKILL, OOM, reboot).
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True
    )
    pid = int(dead.stdout)
    (root / LOCK_FILE).write_bytes(
        orjson.dumps(
            {"host": __import__("socket").gethostname(), "pid": pid, "started": 0, "token": "t"}
        )
    )
    with caplog.at_level(logging.WARNING, logger="batchframe"):
        results = bf.run(frame(6), str(root), **kwargs)
    assert results.ok.height == 6
    assert f"process {pid}" in caplog.text and "no longer running" in caplog.text
    assert len(server.batches_created()) == 1
    assert not (root / LOCK_FILE).exists()


def test_run_logs_options_a_resumed_job_ignores(
    server: bf.LocalBatchServer, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    root = str(tmp_path / "j")
    kwargs = run_kwargs(server)
    bf.run(frame(4), root, limits=bf.BatchLimits(max_requests=2), **kwargs)
    with caplog.at_level(logging.WARNING, logger="batchframe"):
        bf.run(frame(4), root, limits=bf.BatchLimits(max_requests=2), **kwargs)
        assert "ignored" not in caplog.text
        bf.run(frame(4), root, limits=bf.BatchLimits(max_requests=3), metadata={"a": "b"}, **kwargs)
    assert "`limits` passed now are ignored" in caplog.text
    assert "`metadata` passed now is ignored" in caplog.text


def test_collect_before_settled_and_partial(tmp_path: Any) -> None:
    req = requests_for(20)
    with (
        bf.LocalBatchServer(requests_per_second=50, seed=9) as server,
        bf.BatchJob.create(
            req,
            str(tmp_path / "j"),
            client=server.client(),
            limits=bf.BatchLimits(max_requests=10),
            max_in_flight=1,
        ) as job,
    ):
        job.submit()
        with pytest.raises(bf.JobNotSettledError, match=r"job\.wait\(\)"):
            job.collect()
        deadline = time.monotonic() + 10
        while job.status()["settled"].sum() < 1 and time.monotonic() < deadline:
            job.refresh()
            time.sleep(POLL)
        partial = job.collect(partial=True)
        assert partial.ok.height == 10 and partial.failed.height == 0
        job.wait(poll_interval=POLL)
        assert_ledger(job.collect(), req.frame["custom_id"].to_list())


def test_status_html_progress_and_timeout(
    server: bf.LocalBatchServer, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    req = requests_for(6)
    with bf.BatchJob.create(req, str(tmp_path / "j"), client=server.client()) as job:
        status = job.status()
        assert status.columns[:6] == [
            "shard",
            "attempt",
            "submission",
            "model",
            "batch_id",
            "status",
        ]
        assert status.schema["created_at"] == pl.Datetime("us", "UTC")
        assert status["status"].to_list() == ["pending"]
        html = job._repr_html_()
        assert job.job_id in html and "<table" in html
        assert job.job_id in repr(job)
        job.wait(poll_interval=POLL, progress=True)
    err = capsys.readouterr().err
    assert "row" in err and "ok=6" in err


def test_status_and_batches_have_declared_dtypes(tmp_path: Any) -> None:
    from batchframe._report import BATCHES_SCHEMA, STATUS_SCHEMA

    with (
        bf.LocalBatchServer(validation_seconds=30) as slow,
        bf.BatchJob.create(requests_for(3), str(tmp_path / "j"), client=slow.client()) as job,
    ):
        # Nothing submitted: every id, file, timestamp and error is null, yet typed.
        assert job.status().schema == STATUS_SCHEMA | {"cost_usd": pl.Float64}
        assert job.collect(partial=True).batches is not None
        assert job.collect(partial=True).batches.schema == BATCHES_SCHEMA  # type: ignore[union-attr]
        job.submit()
        assert job.status().schema == STATUS_SCHEMA | {"cost_usd": pl.Float64}
        assert not any(isinstance(t, pl.Null) for t in job.status().schema.dtypes())


def test_wait_and_cancel_timeout(tmp_path: Any) -> None:
    with (
        bf.LocalBatchServer(validation_seconds=30) as slow,
        bf.BatchJob.create(requests_for(4), str(tmp_path / "j"), client=slow.client()) as job,
    ):
        with pytest.raises(bf.JobTimeoutError, match="call `wait\\(\\)` again") as info:
            job.wait(poll_interval=POLL, timeout=0.1)
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, bf.JobNotSettledError)
        assert job.status()["status"].to_list() == ["validating"]
        with pytest.raises(TimeoutError):
            bf.run(
                frame(4),
                str(tmp_path / "j2"),
                endpoint="/v1/chat/completions",
                body=BODIES["/v1/chat/completions"],
                custom_id="id",
                client=slow.client(),
                poll_interval=POLL,
                timeout=0.1,
            )


def test_second_job_object_in_same_process_takes_over(
    server: bf.LocalBatchServer, tmp_path: Any
) -> None:
    root = str(tmp_path / "j")
    job = bf.BatchJob.create(requests_for(4), root, client=server.client())
    again = bf.BatchJob.open(root, client=server.client())  # e.g. a re-run notebook cell
    again.wait(poll_interval=POLL)
    assert again.collect().ok.height == 4
    again.close()
    job.close()


def test_client_level_errors_exhausted_keep_state(tmp_path: Any) -> None:
    req = requests_for(5)
    with bf.LocalBatchServer(seed=10) as server:
        api = BatchAPI(server.client(), retry=RetryPolicy(max_tries=2, backoff=0.01))
        server.fail_next("POST", "/v1/files", status=503, times=2)
        root = str(tmp_path / "j")
        with bf.BatchJob.create(req, root, client=api) as job:
            with pytest.raises(
                bf.APIError, match=r"kept failing.*call the same method again"
            ) as info:
                job.submit()
            assert info.value.__cause__ is not None
            err = info.value
            assert (err.operation, err.status_code, err.retryable) == ("files.create", 503, True)
            assert type(err) is bf.APIError
            assert job.status()["status"].to_list() == ["pending"]
            assert "503" in (job.status()["last_error"][0] or "")
        with bf.BatchJob.open(root, client=api) as job:
            job.wait(poll_interval=POLL)
            assert job.collect().ok.height == 5
        assert len(server.batches_created()) == 1


def test_options_are_checked(server: bf.LocalBatchServer, tmp_path: Any) -> None:
    req = requests_for(2)
    with pytest.raises(bf.InputError, match="metadata"):
        bf.BatchJob.create(
            req, str(tmp_path / "a"), client=server.client(), metadata={"batchframe_job": "x"}
        )
    with pytest.raises(bf.InputError, match="strings"):
        bf.BatchJob.create(req, str(tmp_path / "a"), client=server.client(), metadata={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(bf.LimitError, match="max_attempts"):
        bf.BatchJob.create(req, str(tmp_path / "a"), client=server.client(), max_attempts=0)
    with pytest.raises(bf.LimitError, match="queue_token_limit"):
        bf.BatchJob.create(
            req, str(tmp_path / "a"), client=server.client(), queue_token_limit={"m": -1}
        )
    assert not Storage(str(tmp_path / "a")).exists(MANIFEST_FILE)


def test_user_metadata_is_tagged(server: bf.LocalBatchServer, tmp_path: Any) -> None:
    with bf.BatchJob.create(
        requests_for(3), str(tmp_path / "j"), client=server.client(), metadata={"team": "nlp"}
    ) as job:
        job.wait(poll_interval=POLL)
    (batch,) = job_batches(server, job)
    assert batch["metadata"]["team"] == "nlp"
    assert set(batch["metadata"]) >= {
        "batchframe_job",
        "batchframe_shard",
        "batchframe_attempt",
        "batchframe_submission",
        "batchframe_sha256",
    }
    assert all(isinstance(v, str) for v in batch["metadata"].values())


def test_executor_is_used(server: bf.LocalBatchServer, tmp_path: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    names: set[str] = set()

    class Spy(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            def wrapped(*a: Any, **k: Any) -> Any:
                names.add(threading.current_thread().name)
                return fn(*a, **k)

            return super().submit(wrapped, *args, **kwargs)

    with (
        Spy(max_workers=2, thread_name_prefix="spy") as pool,
        bf.BatchJob.create(
            requests_for(6),
            str(tmp_path / "j"),
            client=server.client(),
            executor=pool,
            limits=bf.BatchLimits(max_requests=2),
        ) as job,
    ):
        job.wait(poll_interval=POLL)
        assert job.collect().ok.height == 6
    assert names and all(n.startswith("spy") for n in names)


def test_progress_off_when_not_interactive_and_configure(
    server: bf.LocalBatchServer, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "j")
    with bf.BatchJob.create(requests_for(4), root, client=server.client()) as job:
        job.configure(max_attempts=5, max_in_flight=2, queue_token_limit={"gpt-4o-mini": 10**6})
        with pytest.raises(bf.LimitError):
            job.configure(max_attempts=0)
        job.wait(poll_interval=POLL)  # progress=None: stderr is not a terminal here
    assert capsys.readouterr().err == ""
    with bf.BatchJob.open(root) as job:  # no client needed to read results
        assert job._m.options["max_attempts"] == 5
        assert job._m.options["queue_token_limit"] == {"gpt-4o-mini": 10**6}
        assert job.collect().ok.height == 4


def test_timeline_draws_every_shard_attempt(tmp_path: Any) -> None:
    req = bf.build_requests(
        frame(30),
        endpoint="/v1/chat/completions",
        body=BODIES["/v1/chat/completions"],
        custom_id="id",
    )
    with bf.LocalBatchServer(failure_rate=0.3, requests_per_second=500, seed=2) as server:
        job = bf.BatchJob.create(
            req,
            str(tmp_path / "j"),
            client=server.client(),
            limits=bf.BatchLimits(max_requests=10),
        )
        with job:
            job.wait(poll_interval=POLL)
            status = job.status()
            svg = job.timeline()._repr_svg_()
    import xml.etree.ElementTree as ET

    root = ET.fromstring(svg)  # well-formed
    titles = [el.text or "" for el in root.iter("{http://www.w3.org/2000/svg}title")]
    for shard, attempt in status.select("shard", "attempt").iter_rows():
        assert any(t.startswith(f"{shard}.a{attempt}: completed") for t in titles)
    assert status["attempt"].max() >= 1  # retries drawn as their own bars


def test_counts_track_rows_and_retries(tmp_path: Any) -> None:
    req = bf.build_requests(
        frame(40),
        endpoint="/v1/chat/completions",
        body=BODIES["/v1/chat/completions"],
        custom_id="id",
    )
    with bf.LocalBatchServer(failure_rate=0.25, seed=5) as server:
        job = bf.BatchJob.create(req, str(tmp_path / "j"), client=server.client(), max_attempts=2)
        with job:
            assert job.counts() == (0, 0, 0)
            job.wait(poll_interval=POLL)
            counts = job.counts()
            results = job.collect()
    assert counts.ok == results.ok.height
    assert counts.failed == results.failed.height
    assert counts.ok + counts.failed == 40
    assert counts.retried >= counts.failed > 0  # every final failure was retried once first
