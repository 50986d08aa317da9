from __future__ import annotations

import batchframe as bf


def test_all_is_complete():
    modules = {"annotations"}  # `from __future__ import annotations`
    public = {n for n in dir(bf) if not n.startswith("_") and n not in modules} | {"__version__"}
    assert set(bf.__all__) == public


def test_design_contract_names_exist():
    for name in (
        "build_requests",
        "BatchLimits",
        "BatchJob",
        "BatchResults",
        "LocalBatchServer",
        "run",
        "chat_body",
        "responses_body",
        "embeddings_body",
        "completions_body",
        "moderations_body",
        "image_body",
        "image_edit_body",
    ):
        assert name in bf.__all__, name
