"""Provider profiles: every profile runs a job end to end against its emulation."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import polars as pl
import pytest

import batchframe as bf
from batchframe._cli import main
from batchframe._providers import PROVIDERS, Provider, window_seconds

POLL = 0.02


def frame(n: int = 10) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]}
    )


def model_of(provider: str) -> str:
    return "llama-3.1-8b-instant" if provider == "groq" else "gpt-4o-mini"


def requests_for(provider: str, n: int = 10) -> bf.Requests:
    return bf.build_requests(
        frame(n),
        endpoint="/v1/chat/completions",
        body=bf.chat_body(model_of(provider), user=pl.col("text"), max_tokens=16),
        custom_id="id",
    )


@pytest.mark.parametrize("provider", ["openai", "azure", "azure-legacy", "groq"])
def test_each_profile_runs_a_job_end_to_end(provider: str, tmp_path: Path) -> None:
    window = "3d" if provider == "groq" else "24h"
    with bf.LocalBatchServer(provider=provider) as server:
        results = bf.run(
            frame(10),
            f"{tmp_path}/job",
            endpoint="/v1/chat/completions",
            body=bf.chat_body(model_of(provider), user=pl.col("text"), max_tokens=16),
            custom_id="id",
            client=server.client(),
            poll_interval=POLL,
            provider=provider,
            completion_window=window,
            limits=bf.BatchLimits(max_requests=4),
            keep_files=True,
        )
        assert sorted(results.ok["custom_id"]) == sorted(frame(10)["id"])
        assert results.failed.height == 0
        batches = server.batches()
        assert len(batches) == 3
        url = PROVIDERS[provider].line_url("/v1/chat/completions")
        assert {b["endpoint"] for b in batches} == {url}
        assert {b["completion_window"] for b in batches} == {window}
        inputs = [f for f in server.files() if f["purpose"] == "batch"]
        assert len(inputs) == 3
        for f in inputs:
            lines = [orjson.loads(x) for x in server.file_content(f["id"]).splitlines()]
            assert {line["url"] for line in lines} == {url}
        if provider.startswith("azure"):
            assert all(b["expires_at"] is None for b in batches)  # Azure jobs never expire
        else:
            start = batches[0]["created_at"]
            assert batches[0]["expires_at"] - start == window_seconds(window)
        with bf.BatchJob.open(f"{tmp_path}/job") as job:
            assert job._m.options["provider"]["name"] == provider


def test_profiles_set_default_limits(tmp_path: Path) -> None:
    with bf.LocalBatchServer() as server:
        for name, want in (("azure", 100_000), ("openai", 50_000)):
            with bf.BatchJob.create(
                requests_for(name), f"{tmp_path}/{name}", client=server.client(), provider=name
            ) as job:
                assert job._m.limits["max_requests"] == want
        with bf.BatchJob.create(
            requests_for("groq"),
            f"{tmp_path}/groq",
            client=server.client(),
            provider="groq",
            limits=bf.BatchLimits(max_requests=3),
        ) as job:
            # Fields left at OpenAI's defaults take Groq's; the one given is kept.
            assert job._m.limits["max_bytes"] == 100 * 1024 * 1024
            assert job._m.limits["max_requests"] == 3


@pytest.mark.parametrize(
    ("provider", "window"),
    [("openai", "48h"), ("azure", "7d"), ("groq", "8d"), ("groq", "12h"), ("openai", "tomorrow")],
)
def test_completion_window_refused_before_anything_is_written(
    provider: str, window: str, tmp_path: Path
) -> None:
    root = f"{tmp_path}/job"
    with pytest.raises(bf.ProviderError, match="completion_window") as info:
        bf.BatchJob.create(
            requests_for(provider), root, provider=provider, completion_window=window
        )
    assert isinstance(info.value, ValueError)
    assert PROVIDERS[provider].describe_windows() in str(info.value)
    assert not os.path.exists(root)


def test_groq_takes_windows_up_to_seven_days() -> None:
    groq = bf.get_provider("groq")
    for ok in ("24h", "48h", "3d", "7d", "168h"):
        assert groq.check_window(ok) == ok
    assert bf.get_provider("openai").check_window("24h") == "24h"


def test_server_refuses_a_window_or_endpoint_its_profile_does_not_take() -> None:
    import openai

    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": []},
    }
    with bf.LocalBatchServer(provider="openai") as server:
        client = server.client(max_retries=0)
        f = client.files.create(file=("a.jsonl", orjson.dumps(line) + b"\n"), purpose="batch")
        with pytest.raises(openai.BadRequestError, match=r"Invalid value: '48h'"):
            client.batches.create(
                input_file_id=f.id,
                endpoint="/v1/chat/completions",
                completion_window="48h",  # type: ignore[arg-type]
            )
    with bf.LocalBatchServer(provider="azure-legacy") as server:
        client = server.client(max_retries=0)
        f = client.files.create(file=("a.jsonl", orjson.dumps(line) + b"\n"), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="/chat/completions"):
            client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        # A /v1 line in a legacy batch is a url_mismatch, as Azure reports it.
        b = client.batches.create(
            input_file_id=f.id,
            endpoint="/chat/completions",  # type: ignore[arg-type]
            completion_window="24h",
        )
        server.wait_idle(10)
        done = client.batches.retrieve(b.id)
        assert done.status == "failed"
        assert done.errors is not None and done.errors.data[0].code == "url_mismatch"


def test_groq_refuses_other_endpoints_before_upload(tmp_path: Path) -> None:
    req = bf.build_requests(
        frame(2),
        endpoint="/v1/embeddings",
        body=bf.embeddings_body("text-embedding-3-small", input=pl.col("text")),
        custom_id="id",
    )
    with pytest.raises(bf.ProviderError, match="does not run /v1/embeddings"):
        bf.BatchJob.create(req, f"{tmp_path}/job", provider="groq")


def test_a_job_resumed_with_another_provider_is_refused(tmp_path: Path) -> None:
    root = f"{tmp_path}/job"
    with bf.LocalBatchServer(provider="azure") as server:
        kwargs = {
            "endpoint": "/v1/chat/completions",
            "body": bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=4),
            "custom_id": "id",
            "client": server.client(),
            "poll_interval": POLL,
        }
        bf.run(frame(3), root, provider="azure", **kwargs)  # type: ignore[arg-type]
        with pytest.raises(bf.ProviderError, match="created for provider 'azure'"):
            bf.run(frame(3), root, provider="openai", **kwargs)  # type: ignore[arg-type]
        with pytest.raises(bf.ProviderError, match="created for provider 'azure'"):
            bf.BatchJob.open(root, provider="groq")
        # The same provider (or none named) resumes it.
        again = bf.run(frame(3), root, provider="azure", **kwargs)  # type: ignore[arg-type]
        assert again.ok.height == 3


def test_azure_openai_client_paths_work_against_the_azure_emulation(tmp_path: Path) -> None:
    import openai

    with bf.LocalBatchServer(provider="azure-legacy") as server:
        client = openai.AzureOpenAI(
            azure_endpoint=server.base_url.removesuffix("/v1"),
            api_version="2024-10-21",
            api_key="local",
        )
        try:
            results = bf.run(
                frame(4),
                f"{tmp_path}/job",
                endpoint="/v1/chat/completions",
                body=bf.chat_body("my-4o-mini", user=pl.col("text"), max_tokens=4),
                custom_id="id",
                client=client,
                poll_interval=POLL,
                provider=bf.get_provider("azure-legacy", deployments={"my-4o-mini": "gpt-4o-mini"}),
            )
        finally:
            client.close()
    assert results.ok.height == 4
    assert any(c.path.startswith("/openai/files") for c in server.calls)


def test_deployment_names_are_priced_as_their_model() -> None:
    req = bf.build_requests(
        frame(4),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("my-4o-mini", user=pl.col("text"), max_tokens=10),
        custom_id="id",
    )
    azure = bf.get_provider("azure", deployments={"my-4o-mini": "gpt-4o-mini"})
    est = req.estimate_cost(azure)
    assert est["priced_as"].to_list() == ["gpt-4o-mini"]
    assert est["min_usd"][0] == pytest.approx(est["input_tokens"][0] * 0.075 / 1e6)
    assert req.estimate_cost("openai")["min_usd"].to_list() == [None]  # unknown name


def test_resource_file_cap_makes_a_large_job_wait_instead_of_failing(tmp_path: Path) -> None:
    # The emulated resource holds at most 4 files; a 6-shard job needs 6 inputs and 6
    # outputs. With the cap in its profile, the job uploads as files are deleted.
    with bf.LocalBatchServer(provider="azure", max_files=4) as server:
        capped = bf.get_provider("azure", max_files=4, max_files_with_expiry=4)
        with bf.BatchJob.create(
            requests_for("azure", 12),
            f"{tmp_path}/capped",
            client=server.client(),
            provider=capped,
            limits=bf.BatchLimits(max_requests=2),
        ) as job:
            job.wait(poll_interval=POLL, timeout=60)
            assert job.collect().ok.height == 12
        refused = [c for c in server.calls if c.path == "/v1/files" and c.status == 400]
        assert refused == []
        assert server.files() == []
        # Without the cap in the profile the same job hits the resource's limit.
        with (
            bf.BatchJob.create(
                requests_for("azure", 12),
                f"{tmp_path}/uncapped",
                client=server.client(),
                provider="azure",
                limits=bf.BatchLimits(max_requests=2),
                keep_files=True,
            ) as job,
            pytest.raises(bf.APIError, match="most allowed is 4"),
        ):
            job.wait(poll_interval=POLL, timeout=60)


def test_custom_provider_round_trips_through_the_manifest(tmp_path: Path) -> None:
    mine = Provider(
        name="mine",
        base_url="http://127.0.0.1:1/v1",
        limits=bf.BatchLimits(max_requests=3),
        completion_windows=("24h", "72h"),
        prices={"house-model": {"input": 1.0, "output": 2.0}},
    )
    req = bf.build_requests(
        frame(5),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("house-model", user=pl.col("text"), max_tokens=10),
        custom_id="id",
    )
    est = req.estimate_cost(mine)
    assert est["max_usd"][0] == pytest.approx((est["input_tokens"][0] * 1.0 + 50 * 2.0) / 1e6)
    with bf.LocalBatchServer(provider=mine) as server:
        res = bf.run(
            frame(5),
            f"{tmp_path}/job",
            endpoint="/v1/chat/completions",
            body=bf.chat_body("house-model", user=pl.col("text"), max_tokens=10),
            custom_id="id",
            client=server.client(),
            poll_interval=POLL,
            provider=mine,
            completion_window="72h",
        )
        assert res.ok.height == 5
        assert len(server.batches()) == 2
    with bf.BatchJob.open(f"{tmp_path}/job", provider=mine) as job:
        assert Provider.from_dict(job._m.options["provider"]) == mine


def test_unknown_provider_names_the_known_ones() -> None:
    with pytest.raises(bf.ProviderError, match="'openai', 'azure'"):
        bf.get_provider("anthropic")


def test_cli_submit_with_provider_and_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = f"{tmp_path}/in.csv"
    frame(6).write_csv(src)
    body = orjson.dumps(
        {
            "model": "llama-3.1-8b-instant",
            "messages": [{"role": "user", "content": "{{text}}"}],
            "max_tokens": 8,
        }
    ).decode()
    with bf.LocalBatchServer(provider="groq") as server:
        code = main(
            [
                "submit",
                src,
                f"{tmp_path}/job",
                "--body",
                body,
                "--custom-id",
                "id",
                "--base-url",
                server.base_url,
                "--provider",
                "groq",
                "--completion-window",
                "2d",
                "--wait",
                "--poll-interval",
                "0.02",
                "--quiet",
            ]
        )
        assert code == 0
        assert {b["completion_window"] for b in server.batches()} == {"2d"}
    code = main(["prepare", src, "--body", body, "--custom-id", "id", "--provider", "openai"])
    assert code == 0
    out = capsys.readouterr().out
    assert "expected cost" in out
    assert "no price known for llama-3.1-8b-instant" in out


def test_a_file_cap_that_keep_files_fills_is_reported_not_waited_on(tmp_path: Path) -> None:
    with bf.LocalBatchServer(provider="azure", max_files=4) as server:
        capped = bf.get_provider("azure", max_files=4, max_files_with_expiry=4)
        with bf.BatchJob.create(
            requests_for("azure", 12),
            tmp_path / "job",
            client=server.client(),
            provider=capped,
            limits=bf.BatchLimits(max_requests=2),
            keep_files=True,
        ) as job:
            with pytest.raises(bf.ProviderError, match="batchframe cleanup ROOT"):
                job.wait(poll_interval=POLL, timeout=60)
            done = job.status().filter(pl.col("status") == "completed").height
            assert done >= 1
            assert len(server.files()) <= 4


def test_concurrent_uploads_never_pass_the_file_cap_together() -> None:
    """The server admits uploads under its cap one at a time, however many arrive at once."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    import openai

    with bf.LocalBatchServer(provider="azure", max_files=4) as server:
        client = server.client()
        start = Barrier(8)
        data = b'{"custom_id":"a"}\n' * 20_000  # ~360 KB: storing it takes a while

        def upload(k: int) -> str:
            start.wait()
            try:
                client.files.create(file=(f"in{k}.jsonl", data), purpose="batch")
            except openai.BadRequestError as exc:
                assert "most allowed is 4" in str(exc)
                return "refused"
            return "stored"

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(upload, range(8)))
        assert sorted(outcomes) == ["refused"] * 4 + ["stored"] * 4
        assert len(server.files()) == 4
