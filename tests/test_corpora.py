"""Corpus adapters, the unified schema, the cache, and bad input, on hand-written fixtures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from foundation_rec.corpora import load_corpus, resolve_names
from foundation_rec.corpora.__main__ import main as corpora_main
from foundation_rec.corpora.text import MAX_FIELD_CHARS, clean, render
from foundation_rec.errors import FoundationRecError
from foundation_rec.paths import cache_dir

EXAMPLE_BYO = Path(__file__).resolve().parents[1] / "corpora" / "example-byo"


def texts(corpus) -> dict[str, str]:
    return dict(zip(corpus.items["item_id"], corpus.items["text"]))


def sequences(corpus) -> dict[str, list[str]]:
    ids = corpus.items["item_id"]
    return {u: [ids[i] for i in seq] for u, seq in zip(corpus.sequences["user_id"], corpus.sequences["items"])}


def test_seqrec_amazon(fixture_data):
    c = load_corpus("amazon2014-beauty", fixture_data)
    assert (c.platform, c.role) == ("amazon", "pretrain")
    assert texts(c)["100"] == "title: Red Matte Lipstick & Liner"  # HTML unescaped
    assert texts(c)["101"] == "title: Hydrating Face Cream"  # whitespace normalised
    assert sequences(c)["101"] == ["104", "103", "102"]
    assert c.sequences["timestamps"][1] == [10, 20, 30]
    stats = c.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (4, 5, 11)
    assert stats["avg_history"] == 2.75


def test_lcrec_office_fields_and_order(fixture_data):
    c = load_corpus("amazon2018-office", fixture_data)
    t = texts(c)
    assert t["0"] == "title: Stapler; brand: Swingline; categories: Office Supplies, Staplers"  # empty description left out
    assert t["1"].endswith('description: Smooth "gel" ink.')
    assert t["2"] == "title: Sticky Notes; categories: Paper"
    assert sequences(c) == {"0": ["0", "1", "2"], "1": ["2", "1", "0", "1"]}
    assert c.sequences["timestamps"][0] is None


def test_yelp_offset_join(fixture_data):
    c = load_corpus("yelp", fixture_data)
    t = texts(c)
    # item k of Yelp.item.json is item k+1 of sequential_data.txt
    assert t["1"] == "title: The Great Greek; categories: Diners, Greek"
    assert t["3"] == "title: Cigar Outlet; categories: Tobacco Shops"
    assert sequences(c)["1"] == ["1", "2", "3", "1"]  # repeat visits kept
    assert c.platform == "yelp" and c.role == "target"


def test_recbole_movielens_100k_sorted_by_time(fixture_data):
    c = load_corpus("movielens-100k", fixture_data)
    assert sequences(c)["1"] == ["11", "12", "10"]
    assert c.sequences["timestamps"][0] == [100, 200, 300]
    assert texts(c)["10"] == "title: Toy Story; year: 1995; genres: Animation, Children's, Comedy"


def test_movielens_1m_enrichment(fixture_data):
    c = load_corpus("movielens-1m", fixture_data)
    t = texts(c)
    assert t["100"] == "title: Toy Story; year: 1995; genres: Animation, Children's, Comedy"
    assert t["101"] == "title: Hamlet"  # two movies named Hamlet: left title-only, not guessed
    assert t["102"].endswith("year: 1995; genres: Drama, War")  # replacement character matched
    assert t["103"] == "title: Unknown Film"
    assert c.meta["enrich"] == {"joined": 2, "ambiguous": 1, "unmatched": 1}


def test_steam_enrichment(fixture_data):
    c = load_corpus("steam", fixture_data)
    t = texts(c)
    assert t["100"].startswith("title: Portal 2; genres: Action, Adventure; tags: Puzzle, Co-op")
    assert "Story Rich" not in t["100"]  # only the first 8 tags
    assert t["100"].endswith("developer: Valve; publisher: Valve; price: 19.99; release date: 2011-04-18")
    assert "title: Tom & Jerry; genres: Casual" in t["101"]  # joined on the title field
    assert c.meta["enrich"] == {"joined": 2, "unmatched": 0}


def test_goodreads_titles_and_descriptions(fixture_data):
    c = load_corpus("goodreads", fixture_data)
    assert texts(c)["11"] == "title: Heaven; description: Heaven is a book about the afterlife, and paradise."
    assert sequences(c) == {"u1": ["11", "12", "13"], "u2": ["13"]}


def test_bring_your_own_example():
    c = load_corpus(str(EXAMPLE_BYO))
    assert c.name == "example-byo" and c.platform == "mybookshop" and c.role == "target"
    assert texts(c)["b1"] == "title: The Hobbit; author: J. R. R. Tolkien; genre: fantasy, adventure"
    assert sequences(c)["alice"] == ["b1", "b2", "b5"]  # sorted by timestamp, not file order


def test_byo_csv_without_timestamps_keeps_file_order(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title,colour\na,Shirt,red\nb,Hat,\n")
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu,b\nu,a\nu,b\n")
    c = load_corpus(str(tmp_path))
    assert c.platform == tmp_path.name
    assert texts(c) == {"a": "title: Shirt; colour: red", "b": "title: Hat"}
    assert sequences(c) == {"u": ["b", "a", "b"]} and c.sequences["timestamps"][0] is None


def test_text_truncation_and_tags():
    long = "word " * 200
    out = clean(long)
    assert len(out) <= MAX_FIELD_CHARS and out.endswith("...") and not out.endswith(" ...")
    assert clean("<b>Bold</b>&amp;amp;  more") == "Bold & more"
    assert render({"brand": "X", "title": "T", "empty": ""}, ["title"]) == "title: T; brand: X"


def test_resolve_names_roles():
    pool = resolve_names("all")
    assert len(pool) == 10 and all(n.startswith("amazon") for n in pool)
    assert resolve_names("targets") == ["goodreads", "movielens-100k", "movielens-1m", "steam", "yelp"]
    assert len(resolve_names("everything")) == 15
    assert resolve_names("yelp, steam,yelp") == ["yelp", "steam"]


def test_cache_is_reused_and_invalidated_by_content(tmp_path, fixture_data):
    data = tmp_path / "data"
    shutil.copytree(fixture_data / "amazon2014-beauty", data / "amazon2014-beauty")
    first = load_corpus("amazon2014-beauty", data)
    again = load_corpus("amazon2014-beauty", data)
    assert again.meta["content_hash"] == first.meta["content_hash"]
    with (data / "amazon2014-beauty" / "item2title.jsonl").open("a") as fh:
        fh.write('{"item_id": 105, "title": "New Item"}\n')
    changed = load_corpus("amazon2014-beauty", data)
    assert changed.meta["content_hash"] != first.meta["content_hash"] and len(changed.items) == 6
    entries = [p for p in (cache_dir() / "corpora" / "amazon2014-beauty").iterdir()]
    assert [p.name for p in entries] == [changed.meta["content_hash"]]  # the stale build is gone


def test_half_written_cache_is_never_read(tmp_path, fixture_data, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(fixture_data / "amazon2014-beauty", data / "amazon2014-beauty")
    import datasets

    real_save = datasets.Dataset.save_to_disk

    def crash(self, *a, **k):
        raise KeyboardInterrupt  # a kill in the middle of writing the cache

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", crash)
    with pytest.raises(KeyboardInterrupt):
        load_corpus("amazon2014-beauty", data)
    root = cache_dir() / "corpora" / "amazon2014-beauty"
    assert list(root.glob("*/meta.json")) == []  # nothing complete-looking was left behind
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", real_save)
    assert len(load_corpus("amazon2014-beauty", data).items) == 5


# ----- bad input: one line naming the file (and line) and the fix -----

def _byo(tmp_path: Path, items: str, inter: str) -> str:
    (tmp_path / "items.jsonl").write_text(items)
    (tmp_path / "interactions.csv").write_text(inter)
    return str(tmp_path)


GOOD_ITEMS = '{"item_id": "a", "title": "A"}\n{"item_id": "b", "title": "B"}\n'


@pytest.mark.parametrize(
    "items, inter, message",
    [
        (GOOD_ITEMS + "{not json\n", "user_id,item_id\nu,a\n", r"items.jsonl:3: malformed JSON"),
        (GOOD_ITEMS + '{"item_id": "a", "title": "again"}\n', "user_id,item_id\nu,a\n", r"items.jsonl:3: duplicate item id 'a'"),
        (GOOD_ITEMS, "user_id,item_id\nu,a\nu,zzz\n", r"interactions.csv:3: interaction names unknown item 'zzz'"),
        (GOOD_ITEMS, "user_id,item_id\nu,a,extra\n", r"interactions.csv:2: malformed row"),
        (GOOD_ITEMS, "user,item\nu,a\n", r"interactions.csv:1: header lacks column 'user_id'"),
        ("", "user_id,item_id\n", r"has no items"),
        (GOOD_ITEMS, "user_id,item_id\n", r"has no interactions"),
        (GOOD_ITEMS + '{"item_id": "c", "title": "", "colour": "red"}\n', "user_id,item_id\nu,a\n",
         r"items.jsonl:3: no title: item 'c' has an empty or missing title; give every item a non-empty title"),
        (GOOD_ITEMS + '{"item_id": "c", "colour": "red"}\n', "user_id,item_id\nu,a\n", r"items.jsonl:3: no title: item 'c'"),
        (GOOD_ITEMS + '{"item_id": "c", "title": " <b> </b> "}\n', "user_id,item_id\nu,a\n", r"items.jsonl:3: no title: item 'c'"),
    ],
)
def test_bad_input_one_line_error(tmp_path, items, inter, message):
    with pytest.raises(FoundationRecError, match=message) as info:
        load_corpus(_byo(tmp_path, items, inter))
    assert "\n" not in str(info.value)


def test_skip_mode_counts_bad_lines(tmp_path, capsys):
    folder = _byo(tmp_path, GOOD_ITEMS + "{broken\n", "user_id,item_id\nu,a\nu,zzz\nu,b\nv,a,x\n")
    c = load_corpus(folder, on_bad_line="skip")
    assert sequences(c) == {"u": ["a", "b"]}
    assert c.meta["skipped_lines"] == {
        "items.jsonl: malformed JSON (Expecting property name enclosed in double quotes)": 1,
        "interactions.csv: interaction names unknown item 'zzz'": 1,
        "interactions.csv: malformed row": 1,
    }
    assert corpora_main(["stats", "--corpora", folder, "--on-bad-line", "skip"]) == 0
    assert "skipped 1 bad line(s)" in capsys.readouterr().err


def test_an_empty_titled_item_is_a_bad_line_skipped_and_counted(tmp_path, capsys):
    """A bring-your-own item with an empty title: one line naming the file, the line and the fix; with skip, the
    catalog builds without it and the skip is counted (and said by the command)."""
    folder = _byo(tmp_path, GOOD_ITEMS + '{"item_id": "c", "title": "  "}\n', "user_id,item_id\nu,a\nu,b\n")
    with pytest.raises(FoundationRecError) as info:
        load_corpus(folder)
    assert str(info.value) == (f"{tmp_path / 'items.jsonl'}:3: no title: item 'c' has an empty or missing title; give every item a non-empty "
                               "title (or map its name field to title under [rename] in recipe.toml) (or pass --on-bad-line skip)")
    c = load_corpus(folder, on_bad_line="skip")
    assert texts(c) == {"a": "title: A", "b": "title: B"} and c.meta["skipped_lines"] == {"items.jsonl: no title": 1}
    assert corpora_main(["stats", "--corpora", folder, "--on-bad-line", "skip"]) == 0
    assert "skipped 1 bad line(s) [items.jsonl: no title]" in capsys.readouterr().err


def test_builtin_items_keep_an_empty_title_when_other_fields_have_text_and_none_without_text(tmp_path, fixture_data):
    """The built-in recipes (amazon2018-office has 3 such items): an empty title with a description or categories is
    kept and named by them; an item with no text at all is a bad line there too."""
    data = tmp_path / "data"
    shutil.copytree(fixture_data / "amazon2018-office", data / "amazon2018-office")
    items = data / "amazon2018-office" / "Office.item.json"
    doc = json.loads(items.read_text())
    doc["2"] = {"title": "", "description": "", "brand": "", "categories": "Paper"}
    items.write_text(json.dumps(doc))
    c = load_corpus("amazon2018-office", data)
    assert texts(c)["2"] == "categories: Paper" and c.items["title"][2] == ""
    doc["3"] = {"title": "", "description": " ", "brand": "", "categories": ""}
    items.write_text(json.dumps(doc))
    with pytest.raises(FoundationRecError, match=r"Office.item.json: no text: item '3' has no non-empty field; give the item a title or other"):
        load_corpus("amazon2018-office", data)
    skipped = load_corpus("amazon2018-office", data, on_bad_line="skip")
    assert len(skipped.items) == 3 and skipped.meta["skipped_lines"] == {"Office.item.json: no text": 1}


def test_malformed_builtin_line_names_file_and_line(tmp_path, fixture_data):
    data = tmp_path / "data"
    shutil.copytree(fixture_data / "amazon2014-beauty", data / "amazon2014-beauty")
    with (data / "amazon2014-beauty" / "user2item.jsonl").open("a") as fh:
        fh.write('{"user_id": 9, "item_ids": [100, 999], "timestamps": [1, 2]}\n')
    with pytest.raises(FoundationRecError, match=r"user2item.jsonl:5: interaction names unknown item '999'.*--on-bad-line skip"):
        load_corpus("amazon2014-beauty", data)


def test_lcrec_duplicate_key_is_an_error(tmp_path, fixture_data):
    data = tmp_path / "data"
    shutil.copytree(fixture_data / "amazon2018-office", data / "amazon2018-office")
    (data / "amazon2018-office" / "Office.item.json").write_text('{"0": {"title": "A"}, "0": {"title": "B"}}')
    with pytest.raises(FoundationRecError, match=r"Office.item.json: duplicate key '0'"):
        load_corpus("amazon2018-office", data)


def test_missing_data_dir_file_and_unknown_name(tmp_path, fixture_data):
    with pytest.raises(FoundationRecError, match=r"data directory .* does not exist; pass --data-dir"):
        load_corpus("yelp", tmp_path / "nope")
    with pytest.raises(FoundationRecError, match=r"folder .*yelp does not exist"):
        load_corpus("yelp", tmp_path)
    (tmp_path / "goodreads").mkdir()
    shutil.copy(fixture_data / "goodreads" / "book.csv", tmp_path / "goodreads")
    with pytest.raises(FoundationRecError, match=r"missing file .*book-desc.csv"):
        load_corpus("goodreads", tmp_path)
    with pytest.raises(FoundationRecError, match=r"unknown corpus 'yelpp'; use one of"):
        resolve_names("yelp,yelpp")


def test_cli_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        corpora_main(["stats", "--corpora", "nosuch"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown corpus 'nosuch'") and "\n" not in err


def test_failed_rebuild_keeps_existing_cache(tmp_path, fixture_data):
    data = tmp_path / "data"
    shutil.copytree(fixture_data / "amazon2014-beauty", data / "amazon2014-beauty")
    good = load_corpus("amazon2014-beauty", data)
    (data / "amazon2014-beauty" / "item2title.jsonl").write_text("{bad\n")
    with pytest.raises(FoundationRecError):
        load_corpus("amazon2014-beauty", data)
    meta = json.loads((cache_dir() / "corpora" / "amazon2014-beauty" / good.meta["content_hash"] / "meta.json").read_text())
    assert meta["content_hash"] == good.meta["content_hash"]


@pytest.mark.parametrize("name", ["items.jsonl", "interactions.csv"])
def test_a_file_that_is_not_utf8_is_one_line_naming_file_line_and_byte(tmp_path, capsys, name):
    folder = Path(_byo(tmp_path, GOOD_ITEMS, "user_id,item_id\nu,a\n"))
    (folder / name).write_bytes((folder / name).read_bytes() + b"\xff\xfe\x00garbage\n")
    line = (folder / name).read_bytes().count(b"\n")
    with pytest.raises(SystemExit) as info:
        corpora_main(["stats", "--corpora", str(folder)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {folder / name}:{line}: byte ") and "is not UTF-8" in err and "save the file as UTF-8" in err
