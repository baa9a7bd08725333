"""``python -m foundation_rec.pretrain`` end to end on the fixture corpora with the tiny preset."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundation_rec import checkpoint
from foundation_rec.backbones import BackboneConfig, load_backbone
from foundation_rec.idgen import IDGenerator, IDTable
from foundation_rec.pretrain import main, parse_args

CORPORA = "amazon2014-beauty,amazon2018-office"
FAST = ["--id-beams", "2", "--id-max-tokens", "3", "--id-input-tokens", "32", "--progress", "false"]


def args(fixture_data, out, *extra) -> list[str]:
    return ["--corpora", CORPORA, "--data-dir", str(fixture_data), "--preset", "tiny", "--output-dir", str(out), *FAST, *extra]


def test_main_runs_end_to_end_and_leaves_a_loadable_checkpoint(fixture_data, tmp_path, capsys):
    assert main(args(fixture_data, tmp_path)) == 0
    out = capsys.readouterr().out
    summary, end = json.JSONDecoder().raw_decode(out)
    ending = out[end:]
    assert summary["preset"] == "tiny" and summary["test"]["users"] > 0
    # it ends in plain words: the shipped method's pool-validation N@10 next to text-kNN's, where the model is, what to run next
    assert f"The foundation model is in {tmp_path / 'best'}" in ending and "text-kNN" in ending
    assert f"scores N@10 {summary['best_valid_N@10']:.4f}" in ending and "Next: python -m foundation_rec.zeroshot --target yelp" in ending
    ckpt = tmp_path / "checkpoint"
    config = checkpoint.read_config(ckpt)
    assert config["format_version"] == checkpoint.FORMAT_VERSION and config["corpora"] == CORPORA.split(",")
    rec = load_backbone(BackboneConfig(name_or_path=str(ckpt / "recommender"), device="cpu"))
    gen = IDGenerator.load(ckpt / "generator", device="cpu")
    assert rec.tokenizer.get_vocab() == gen.tokenizer.get_vocab()
    table = IDTable.load(ckpt / "ids")
    pooled = [i for ids in table.ids.values() for i in ids]
    assert len(pooled) == len(set(pooled)) > 0
    state, tensors = checkpoint.read_state(ckpt)
    assert state["stage"] == len(state["stages"]) and "rng.cpu" in tensors
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test"]["pooled"] == summary["test"]
    assert (tmp_path / "best" / "foundation_rec.json").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--load-in-4bit"], "CUDA"),
        (["--preset", "huge"], "unknown preset"),
        (["--resume", "."], "not a foundation_rec checkpoint"),
        (["--alt-style", "both"], "alt-style"),
        (["--init-from", "."], "not a foundation_rec checkpoint"),
        (["--init-from", ".", "--resume", "."], "pass only one"),
        (["--init-from", ".", "--lora"], "drop --backbone, --lora"),
        (["--id-gen-batch-size", "0"], "--id-gen-batch-size must be at least 1"),
        (["--rec-lr", "-1"], "--rec-lr must be in (0, 1]"),
        (["--id-lr", "0"], "--id-lr must be in (0, 1]"),
        (["--rec-batch-size", "0"], "--rec-batch-size must be at least 1"),
        (["--rec-epochs", "-2"], "--rec-epochs must be >= 0"),
        (["--users-per-corpus", "-5"], "--users-per-corpus must be >= 0"),
        (["--eval-beams", "0"], "--eval-beams must be at least 1"),
        (["--warmup-items", "-1"], "--warmup-items must be >= 0"),
        (["--preset", "minilm-causal"], "for the recommender only"),
        (["--output-dir", "/dev/null/run"], "--output-dir /dev/null/run is not writable"),
    ],
)
def test_user_errors_are_one_line(fixture_data, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(args(fixture_data, tmp_path, *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_init_from_starts_a_new_run_from_a_checkpoints_models(fixture_data, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(args(fixture_data, first)) == 0
    # no training in the second run: its models and IDs must be exactly those of the first run's best checkpoint
    assert main(args(fixture_data, second, "--init-from", str(first / "best"), "--warmup-epochs", "0", "--rec-epochs", "0", "--id-epochs", "0")) == 0
    capsys.readouterr()
    for part in ("recommender", "generator"):
        a, b = (load_backbone(BackboneConfig(name_or_path=str(d / part), device="cpu")).hf_model.state_dict() for d in (first / "best", second / "best"))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert IDTable.load(second / "best" / "ids").ids == IDTable.load(first / "best" / "ids").ids
    assert checkpoint.read_config(second / "best")["run"]["init_from"] == str(first / "best")


def test_cpu_recipe_trains_a_causal_recommender_with_the_sequence_objective():
    run, train, preset = parse_args(["--device", "cpu"])
    assert (preset, run.rec_preset, train.rec_objective, run.users_per_corpus) == ("minilm-t5", "minilm-causal", "sequence", 300)
    assert run.content_vectors and train.warmup_items == 3000 and run.id_extractive == "yes"
    run, train, preset = parse_args(["--device", "cpu", "--preset", "t5-cpu"])
    assert (preset, run.rec_preset, train.rec_objective, run.content_vectors) == ("t5-cpu", "causal-cpu", "sequence", False)
    run, train, _ = parse_args(["--device", "cpu", "--preset", "t5-cpu", "--rec-preset", "t5-cpu", "--rec-objective", "next"])
    assert (run.rec_preset, train.rec_objective) == ("t5-cpu", "next")  # flags win over the recipe
    run, train, preset = parse_args(["--device", "cpu", "--backbone", "some/model"])
    assert (preset, run.rec_preset, train.rec_objective) == ("minilm-t5", None, "next")  # a backbone drops the recipe's recommender


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_without_cuda_is_a_user_error(fixture_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(args(fixture_data, tmp_path, "--device", "cuda"))
    assert "--device cpu" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_kill_9_equals_an_uninterrupted_run(fixture_data, tmp_path):
    """A real ``kill -9`` in the middle of an epoch, then ``--resume``: the same results as one uninterrupted run."""
    init = tmp_path / "init"  # a saved tiny backbone, so both runs share weights and tokenizer
    load_backbone(BackboneConfig(preset="tiny", device="cpu"), tokenizer_texts=None).save(init)
    common = ["--backbone", str(init), "--rounds", "2", "--rec-epochs", "3", "--rec-batch-size", "1", "--checkpoint-every", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "foundation_rec.pretrain"]
    subprocess.run([*cmd, *args(fixture_data, tmp_path / "full", *common)], check=True, env=env, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, *args(fixture_data, out, *common)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = out / "checkpoint" / "training_state" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for a checkpoint inside a recommender epoch
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if state["stages"][state["stage"]][0] == "rec" and state["batch"] > 0:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run([*cmd, *args(fixture_data, out, *common, "--resume", str(out / "checkpoint"))], check=True, env=env, capture_output=True)
    full, resumed = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("full", "killed"))
    assert resumed == full


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(fixture_data, tmp_path):
    """``accelerate launch --num_processes 2 --cpu``: gradients averaged, ID generation sharded, one checkpoint."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "-m", "foundation_rec.pretrain"]
    subprocess.run([*cmd, *args(fixture_data, tmp_path)], check=True, env=env, capture_output=True, timeout=600)
    table = IDTable.load(tmp_path / "checkpoint" / "ids")
    pooled = [i for ids in table.ids.values() for i in ids]
    assert len(pooled) == len(set(pooled)) > 0
    assert json.loads((tmp_path / "results.json").read_text())["test"]["pooled"]["users"] > 0


WORDS = [
    "amber", "birch", "cobalt", "delta", "ember", "falcon", "garnet", "harbor", "indigo", "juniper", "kestrel", "lotus",
    "maple", "nectar", "onyx", "pepper", "quartz", "raven", "saffron", "timber", "umber", "velvet", "willow", "xenon",
    "yarrow", "zephyr", "acorn", "bramble", "cedar", "dune", "fjord", "glacier", "heron", "iris", "jasper", "kelp",
    "lagoon", "meadow", "nutmeg", "orchid",
]


@pytest.mark.slow
def test_the_method_learns_a_predictable_next_item(tmp_path, capsys):
    """End to end, the method learns: on a 40-item catalog where every user walks a fixed cycle (the next item is
    always the one after the last), ``pretrain`` with the tiny preset puts the held-out item in the top 10 for most
    test users; random ranking does so for 10/40 = 25%. Catches prompts, IDs, targets and tries that disagree."""
    corpus = tmp_path / "cycle"
    corpus.mkdir()
    (corpus / "items.jsonl").write_text("".join(json.dumps({"item_id": f"i{i}", "title": f"{w} {w}stone"}) + "\n" for i, w in enumerate(WORDS)))
    starts = random.Random(0).choices(range(len(WORDS)), k=150)
    rows = [f"u{u},i{(s + t) % len(WORDS)},{t}" for u, s in enumerate(starts) for t in range(8)]
    (corpus / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    flags = ["--users-per-corpus", "0", "--rec-epochs", "8", "--rec-lr", "3e-3", "--id-epochs", "0", "--test-users", "0"]
    assert main(["--corpora", str(corpus), "--preset", "tiny", "--output-dir", str(out), *FAST, *flags]) == 0
    summary = json.JSONDecoder().raw_decode(capsys.readouterr().out)[0]  # the JSON summary, then the plain-words ending
    assert summary["test"]["users"] == 150
    assert summary["test"]["R@10"] >= 0.6, summary["test"]
