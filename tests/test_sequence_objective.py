"""The ``sequence`` recommender objective: sequence prompts, all-position labels, windows, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import tiny_models

from foundation_rec import checkpoint
from foundation_rec.api import FoundationRec
from foundation_rec.backbones import BackboneConfig, load_backbone
from foundation_rec.corpora import load_corpora
from foundation_rec.errors import FoundationRecError
from foundation_rec.pool import Pool
from foundation_rec.pretrain import main
from foundation_rec.prompts import PromptBuilder
from foundation_rec.recommender import IGNORE, GenerativeRecommender
from foundation_rec.splits import leave_one_out
from foundation_rec.train import TrainConfig, Trainer

CORPORA = "amazon2014-beauty,amazon2018-office"
FAST = ["--id-beams", "2", "--id-max-tokens", "3", "--id-input-tokens", "32", "--progress", "false"]
IDS = [[10, 11], [12], [13, 14, 15], [16]]  # item i's ID tokens (no EOS)


@pytest.fixture(scope="module")
def causal() -> GenerativeRecommender:
    """A recommender on the tiny-causal preset (a 2-layer Llama)."""
    backbone = load_backbone(BackboneConfig(preset="tiny-causal", device="cpu", seed=0))
    return GenerativeRecommender(backbone.model, backbone.tokenizer)


def test_sequence_prompt_is_the_start_of_every_longer_sequence(causal):
    builder = PromptBuilder.for_training(causal.tokenizer, {"rec_objective": "sequence"}, IDS)
    eos = causal.eos_token_id
    full = builder.build([0, 1, 2])
    prefix = builder.build([0, 1])
    assert builder.templates == (builder.templates[0],) and builder.templates[0].endswith("{history}")
    start = full.spans[0][0]
    assert full.tokens[start:] == [10, 11, eos, 12, eos, 13, 14, 15, eos]  # every ID followed by EOS, nothing after
    assert full.spans == [(start, start + 2), (start + 3, start + 4), (start + 5, start + 8)]
    # the prompt for the shorter history, then the next ID and EOS, is exactly the longer prompt
    assert prefix.tokens + IDS[2] + [eos] == full.tokens
    # the token cap drops the oldest items whole, counting the EOS after each
    capped = PromptBuilder.for_training(causal.tokenizer, {"rec_objective": "sequence", "max_prompt_tokens": start + 5}, IDS).build([0, 1, 2])
    assert capped.items == [2] and capped.tokens[start:] == [13, 14, 15, eos]
    # the default objective keeps the templates and the ", " separator between items only
    plain = PromptBuilder.for_training(causal.tokenizer, {}, IDS)
    assert len(plain.templates) > 1 and eos not in plain.build([0, 1, 2]).tokens


def test_all_position_labels_cover_every_item_but_the_first(causal):
    builder = PromptBuilder.for_training(causal.tokenizer, {"rec_objective": "sequence"}, IDS)
    prompt = builder.build([0, 1, 2])
    spans = [list(zip(prompt.items, prompt.spans, strict=True))]
    batch = causal.collate([prompt.tokens], [IDS[3]], spans, all_positions=True)
    eos = causal.eos_token_id
    labels = batch.labels[0].tolist()
    start = prompt.spans[0][0]
    expected = [IGNORE] * (start + 3) + [12, eos, 13, 14, 15, eos] + [16, eos]
    assert labels == expected and batch.input_ids[0].tolist() == prompt.tokens + [16, eos]
    only_target = causal.collate([prompt.tokens], [IDS[3]], spans).labels[0].tolist()
    assert only_target == [IGNORE] * len(prompt.tokens) + [16, eos]


def test_all_position_loss_is_the_token_weighted_mean_of_the_prefix_losses(causal):
    """A causal model sees the same left context at each item either way, so one pass equals every prefix example."""
    builder = PromptBuilder.for_training(causal.tokenizer, {"rec_objective": "sequence"}, IDS)
    history, target = [0, 1, 2], 3
    prompt = builder.build(history)
    causal.model.train(False)
    with torch.no_grad():
        one_pass = causal.loss(causal.collate([prompt.tokens], [IDS[target]], [list(zip(prompt.items, prompt.spans, strict=True))], True))
        total, count = 0.0, 0
        for k in range(1, len(history) + 1):
            items = [*history, target][: k + 1]
            batch = causal.collate([builder.build(items[:-1]).tokens], [IDS[items[-1]]])
            n = len(IDS[items[-1]]) + 1
            total, count = total + float(causal.loss(batch)) * n, count + n
    assert float(one_pass) == pytest.approx(total / count, rel=1e-5)


def test_windows_cover_every_training_target_once(fixture_data):
    pool = Pool(load_corpora(CORPORA, data_dir=fixture_data), max_history=3)
    examples = pool.examples("train")
    windows = examples.last_per_user(stride=3)
    covered, expected = [], []
    for c, corpus in enumerate(pool.corpora):
        split = leave_one_out(corpus.item_sequences, "train", max_history=3)
        for row in np.unique(split.rows):
            mine = np.flatnonzero(split.rows == row)
            expected += [(c, int(row), int(split.positions[i])) for i in mine]
    for i in range(len(windows)):
        c, index = int(windows.corpus[i]), int(windows.index[i])
        split = windows.splits[c]
        row, position = int(split.rows[index]), int(split.positions[index])
        history = len(windows.history(i))
        # the window's target and every history item after its first are training targets
        covered += [(c, row, p) for p in range(position - history + 1, position + 1)]
    assert sorted(covered) == sorted(expected) and len(covered) == len(set(covered))
    assert len(windows) < len(examples)  # fewer examples than prefixes: that is the point
    assert len(examples.last_per_user()) == len({(int(examples.corpus[i]), examples.user(i)) for i in range(len(examples))})


def test_trainer_with_the_sequence_objective_trains_and_evaluates(fixture_data, tmp_path):
    pool = Pool(load_corpora(CORPORA, data_dir=fixture_data))
    bundle = tiny_models(pool.texts(), 0, decoder_only=True)
    config = TrainConfig(rec_objective="sequence", rec_batch_size=2, id_batch_size=2, warmup_batch_size=4, checkpoint_every=50)
    trainer = Trainer(config, pool, bundle, tmp_path, run_config={"train": {}}, progress=False)
    assert trainer.prompts.sequence
    examples = trainer.phase("rec").examples
    assert len(examples) == len(trainer.train_examples.last_per_user(pool.max_history)) < len(trainer.train_examples)
    result = trainer.run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rec_steps = [r for r in records if r["phase"] == "rec"]
    assert rec_steps and all(np.isfinite(r["loss"]) for r in rec_steps)
    assert result["test"]["pooled"]["users"] == len(trainer.test_examples)


def test_sequence_objective_refuses_an_encoder_decoder(fixture_data, tmp_path):
    pool = Pool(load_corpora(CORPORA, data_dir=fixture_data))
    with pytest.raises(FoundationRecError, match="decoder-only"):
        Trainer(TrainConfig(rec_objective="sequence"), pool, tiny_models(pool.texts()), tmp_path, run_config={})
    with pytest.raises(FoundationRecError, match="rec-objective"):
        TrainConfig(rec_objective="all").check()


def test_pretrain_cli_with_a_causal_recommender_and_the_api_reuses_its_prompts(fixture_data, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--rec-preset", "tiny-causal", "--rec-objective", "sequence", "--id-epochs", "0"]
    assert main(["--corpora", CORPORA, "--data-dir", str(fixture_data), "--preset", "tiny", "--output-dir", str(out), *FAST, *flags]) == 0
    summary = json.JSONDecoder().raw_decode(capsys.readouterr().out)[0]  # the JSON summary, then the plain-words ending
    assert summary["test"]["users"] > 0
    config = checkpoint.read_config(out / "best")
    assert config["train"]["rec_objective"] == "sequence" and config["run"]["rec_preset"] == "tiny-causal"
    model = FoundationRec.from_pretrained(out / "best", device="cpu", num_beams=4)
    catalog = model.index_catalog("amazon2014-beauty", data_dir=fixture_data, progress=False)
    prompts = model.catalog_recommender().prompts
    assert prompts.sequence and prompts.build([0]).tokens[-1] == model.recommender.eos_token_id
    recs = model.recommend([catalog.item_ids[0], catalog.item_ids[1]], k=3)
    assert 0 < len(recs) <= 3 and all(r["item_id"] in set(catalog.item_ids) for r in recs)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rec-preset", "smollm2-135m"], "--rec-preset"),
        (["--preset", "causal-cpu"], "--rec-preset causal-cpu"),
        (["--rec-objective", "sequence"], "decoder-only"),
    ],
)
def test_rec_preset_and_objective_errors_are_one_line(fixture_data, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--corpora", CORPORA, "--data-dir", str(fixture_data), "--preset", "tiny", "--output-dir", str(tmp_path), *FAST, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
