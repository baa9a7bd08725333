"""Zero-shot command and Python API on a tiny pre-trained checkpoint and the fixture corpora."""

from __future__ import annotations

import json

import pytest

from foundation_rec.api import FoundationRec
from foundation_rec.corpora import load_corpus
from foundation_rec.errors import FoundationRecError
from foundation_rec.zeroshot import main as zeroshot_main


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> FoundationRec:
    return FoundationRec.from_pretrained(tiny_checkpoint, device="cpu", num_beams=10)


def test_zeroshot_cli_writes_results_for_unseen_target(tiny_checkpoint, fixture_data, tmp_path):
    assert zeroshot_main(["--target", "yelp", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(fixture_data),
                          "--out", str(tmp_path), "--baselines", "random,popularity", "--num-beams", "10", "--progress", "false"]) == 0
    results = json.loads((tmp_path / "yelp.json").read_text())["results"]
    assert [r["method"] for r in results] == ["idgenrec-zeroshot+counts", "random", "popularity"]  # the default protocol: counts
    ours = results[0]
    assert ours["protocol"] == "counts" and ours["setting"] == "zero-shot" and ours["unique_ids"] and ours["catalog_size"] == 3
    assert ours["users_evaluated"] == 2 and set(ours["metrics"]) == {"R@5", "R@10", "N@5", "N@10"}
    assert "| yelp | idgenrec-zeroshot+counts |" in (tmp_path / "yelp.md").read_text()


def test_protocol_both_gives_strict_then_counts_on_the_same_users(tiny_checkpoint, fixture_data, tmp_path):
    assert zeroshot_main(["--target", "yelp", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(fixture_data),
                          "--out", str(tmp_path), "--protocol", "both", "--progress", "false"]) == 0
    results = json.loads((tmp_path / "yelp.json").read_text())["results"]
    assert [(r["method"], r["protocol"]) for r in results] == [("idgenrec-zeroshot", "strict"), ("idgenrec-zeroshot+counts", "counts")]
    assert results[0]["users_evaluated"] == results[1]["users_evaluated"] == 2


def test_methods_and_history_settings_are_rows_on_the_same_users(tiny_checkpoint, fixture_data, tmp_path, capsys):
    """--methods adds generation alone as its own row; --history both scores each row kept and excluded, same users,
    and the printed table and the .md name each row's setting."""
    assert zeroshot_main(["--target", "yelp", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(fixture_data), "--out", str(tmp_path),
                          "--methods", "idgenrec-zeroshot,idgenrec", "--protocol", "strict", "--history", "both", "--num-beams", "10",
                          "--progress", "false"]) == 0
    results = json.loads((tmp_path / "yelp.json").read_text())["results"]
    assert [(r["method"], r["exclude_history"]) for r in results] == [
        ("idgenrec-zeroshot", False), ("idgenrec-zeroshot", True), ("idgenrec", False), ("idgenrec", True)]
    assert len({r["users_evaluated"] for r in results}) == 1 and results[2]["content_prior"] == 0.0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| yelp |")]
    written = [line for line in (tmp_path / "yelp.md").read_text().splitlines() if line.startswith("| yelp |")]
    assert printed == written and [line.split(" | ")[1:3] for line in written] == [
        ["idgenrec-zeroshot", "kept"], ["idgenrec-zeroshot", "excluded"], ["idgenrec", "kept"], ["idgenrec", "excluded"]]


def test_a_bring_your_own_target_with_an_empty_title_stops_or_skips_it(tiny_checkpoint, tmp_path, capsys):
    """One error line naming the file and the line; with --on-bad-line skip it runs and says it skipped one line."""
    shop = tmp_path / "shop"
    shop.mkdir()
    names = ["Red running shoes", "Blue rain jacket", "Green wool hat", "", "Black leather boots"]
    (shop / "items.jsonl").write_text("".join(json.dumps({"item_id": f"i{n}", "title": t}) + "\n" for n, t in enumerate(names)))
    sequences = {"u0": [0, 1, 2, 4], "u1": [1, 2, 4, 0], "u2": [2, 4, 0, 1], "u3": [4, 0, 1, 2]}  # the untitled item i3 is never had
    (shop / "interactions.csv").write_text("user_id,item_id\n" + "".join(f"{u},i{i}\n" for u, items in sequences.items() for i in items))
    args = ["--target", str(shop), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out"), "--progress", "false"]
    with pytest.raises(SystemExit) as info:
        zeroshot_main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err == [(f"error: {shop / 'items.jsonl'}:4: no title: item 'i3' has an empty or missing title; give every "
                                             "item a non-empty title (or map its name field to title under [rename] in recipe.toml) "
                                             "(or pass --on-bad-line skip)")]
    assert zeroshot_main([*args, "--on-bad-line", "skip"]) == 0
    assert "shop: skipped 1 bad line(s) [items.jsonl: no title]" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "shop.json").read_text())["results"][0]["catalog_size"] == 4


@pytest.mark.parametrize(("flags", "message"), [(["--methods", "idgenrec-rerank"], "unknown --methods entry 'idgenrec-rerank'; use a comma list of"),
                                                (["--methods", "content-prior"], "--methods content-prior needs a checkpoint with a content scorer"),
                                                (["--history", "sometimes"], "--history 'sometimes' is not one of kept, excluded, both")])
def test_bad_methods_or_history_are_one_line(tiny_checkpoint, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        zeroshot_main(["--target", "yelp", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_leakage_guard_refuses_a_pretrained_platform(tiny_checkpoint, fixture_data, tmp_path, capsys):
    args = ["--target", "amazon2014-beauty", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(fixture_data), "--out", str(tmp_path),
            "--num-beams", "10", "--progress", "false"]
    with pytest.raises(SystemExit) as info:
        zeroshot_main(args)
    assert info.value.code == 2
    assert "pre-trained on; pick an unseen platform or pass --allow-seen-platform" in capsys.readouterr().err
    assert zeroshot_main([*args, "--allow-seen-platform"]) == 0
    result = json.loads((tmp_path / "amazon2014-beauty.json").read_text())["results"][0]
    assert result["setting"] == "seen platform"


def test_bring_your_own_target_recommends_only_catalog_items(model):
    folder = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "corpora" / "example-byo")
    catalog = model.index_catalog(folder, progress=False)
    assert len(set(catalog.ids)) == len(catalog.ids) == 5
    recs = model.recommend(["b1", "b2"], k=5)
    assert recs and len(recs) <= 5
    assert {r["item_id"] for r in recs} <= set(catalog.item_ids)
    assert len({r["item_id"] for r in recs}) == len(recs)  # distinct items
    assert all(r["textual_id"] == catalog.ids[catalog.row(r["item_id"])] for r in recs)
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)


def test_every_recommendation_is_in_the_target_catalog(model, fixture_data):
    corpus = load_corpus("goodreads", fixture_data)
    model.index_catalog(corpus, progress=False)
    rows = model.catalog_recommender(num_beams=10).recommend([[0], [0, 1], [2]], 10)
    assert rows.shape == (3, 10)
    valid = rows[rows >= 0]
    assert valid.size and valid.max() < len(corpus.items)
    for row in rows:  # no item twice in one list
        kept = row[row >= 0]
        assert len(set(kept.tolist())) == len(kept)


def test_api_records_catalog_is_cached_and_bad_input_is_explained(model):
    records = [{"item_id": "x", "title": "Red running shoes"}, {"item_id": "y", "title": "Blue rain jacket"},
               {"item_id": "z", "title": "Green wool hat", "brand": "Acme"}]
    first = model.index_catalog(records, name="shop", progress=False)
    again = model.index_catalog(records, name="shop", progress=False)
    assert first.ids == again.ids and len(set(first.ids)) == 3
    assert first.texts[2] == "title: Green wool hat; brand: Acme"
    with pytest.raises(FoundationRecError, match="the history is empty"):
        model.recommend([], k=3)
    with pytest.raises(FoundationRecError, match="history entry 2, 'zzqx', matches no item of catalog 'shop'"):
        model.recommend(["x", "zzqx"], k=3)
    with pytest.raises(FoundationRecError, match="k=0 is out of range"):
        model.recommend(["x"], k=0)
    with pytest.raises(FoundationRecError, match="duplicate item id 'x'"):
        model.index_catalog([*records, {"item_id": "x", "title": "again"}], name="shop")


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        zeroshot_main(["--target", "yelp", "--checkpoint", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a foundation_rec checkpoint" in err[0]


@pytest.mark.parametrize("damage", ["truncated weights", "malformed config"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_nothing_is_overwritten(tiny_checkpoint, fixture_data, tmp_path, capsys, damage):
    import shutil

    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, broken)
    file = broken / ("recommender/model.safetensors" if damage == "truncated weights" else "foundation_rec.json")
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncated weights" else b"{not json")
    before = {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as info:
        zeroshot_main(["--target", "yelp", "--checkpoint", str(broken), "--data-dir", str(fixture_data), "--out", str(tmp_path / "out"),
                       "--progress", "false"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {file}") and ("is damaged" in err[0] or "is not valid JSON" in err[0])
    assert {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()} == before
    assert not any((tmp_path / "out").rglob("*"))


def test_an_unwritable_out_is_one_line_before_any_work(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        zeroshot_main(["--target", "yelp", "--checkpoint", str(tiny_checkpoint), "--out", str(blocker / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {blocker / 'out'} is not writable")


@pytest.mark.parametrize(("value", "message"), [("-1", "--content-prior -1 must be >= 0"), ("3", "--content-prior 3 needs a checkpoint with a content scorer")])
def test_content_prior_errors_are_one_line(tiny_checkpoint, tmp_path, capsys, value, message):
    with pytest.raises(SystemExit):
        zeroshot_main(["--target", "yelp", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--content-prior", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_int8_ids_get_their_own_cache_entry_and_the_fp32_entry_is_kept(tiny_checkpoint, fixture_data, tmp_path):
    """--id-precision int8 writes its IDs to a cache file of its own (recorded as int8), next to fp32's, which it never replaces."""
    base = ["--target", "yelp", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(fixture_data), "--num-beams", "10", "--progress", "false"]
    assert zeroshot_main([*base, "--out", str(tmp_path / "fp32")]) == 0
    from foundation_rec.paths import cache_dir

    files = sorted((cache_dir() / "catalog_ids").glob("yelp-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["precision"] == "fp32"
    fp32_bytes = files[0].read_bytes()
    assert zeroshot_main([*base, "--out", str(tmp_path / "int8"), "--id-precision", "int8"]) == 0
    records = {f: json.loads(f.read_text()) for f in (cache_dir() / "catalog_ids").glob("yelp-*.json")}
    assert sorted(r["precision"] for r in records.values()) == ["fp32", "int8"] and files[0].read_bytes() == fp32_bytes
    result = json.loads((tmp_path / "int8" / "yelp.json").read_text())["results"][0]
    assert result["id_precision"] == "int8" and result["unique_ids"]


def test_an_unknown_id_precision_is_one_line(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        zeroshot_main(["--target", "yelp", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--id-precision", "fp16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --id-precision 'fp16' is not one of fp32, int8"]


def test_a_catalog_takes_counts_from_a_count_field_or_a_file_and_falls_back_to_strict(model, tmp_path):
    records = [{"item_id": f"i{n}", "title": f"Item number {n}", "count": 10 * n} for n in range(12)]
    catalog = model.index_catalog(records, name="counted", progress=False)
    assert catalog.counts.popularity.tolist() == [10.0 * n for n in range(12)] and "count" not in catalog.texts[0]
    assert all(r["method"] == "idgenrec-zeroshot+counts" for r in model.recommend(["i1", "i2"], k=3))
    assert all(r["method"] == "idgenrec-zeroshot" for r in model.recommend(["i1", "i2"], k=3, protocol="strict"))
    plain = model.index_catalog([{k: v for k, v in r.items() if k != "count"} for r in records], name="plain", progress=False)
    assert plain.counts is None
    with pytest.raises(FoundationRecError, match="has no platform counts"):
        model.recommend(["i1"], k=3, protocol="counts")
    (tmp_path / "log.csv").write_text("user_id,item_id\nu,i3\nu,i4\nv,i3\n", encoding="utf-8")
    assert model.index_catalog(records, name="logged", counts=tmp_path / "log.csv", progress=False).counts.popularity[3] == 2
    with pytest.raises(FoundationRecError, match="record 2: count -1 is not a non-negative number"):
        model.index_catalog([records[0], {**records[1], "count": -1}], name="bad", progress=False)


@pytest.mark.parametrize("module", ["zeroshot", "pretrain", "demo"])
def test_an_unknown_flag_is_one_line_naming_it(module, capsys):
    main = __import__(f"foundation_rec.{module}", fromlist=["main"]).main
    with pytest.raises(SystemExit) as info:
        main(["--target", "yelp", "--protocols", "counts"] if module == "zeroshot" else ["--protocols", "counts"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err == ["error: unknown argument '--protocols'; run with --help to list the flags"]
