"""Zero-shot recommendation on an unseen platform: ``python -m foundation_rec.zeroshot --target yelp``.

1. builds the target corpus (a built-in name or a bring-your-own folder);
2. generates a unique textual ID for each of its items with the checkpoint's shared ID generator;
3. builds the target's prefix trie;
4. recommends for every target user with trie-constrained beam search and scores the result.

History is everything before the user's last item (at most 20 items), the truth is the last item,
ranked over the whole target catalog (Recall@5/10, NDCG@5/10). Nothing is trained on the target.
Two protocols (``--protocol``): *counts* (``idgenrec-zeroshot+counts``, the default) reads item texts, the
user's own history and the target's training-split counts (popularity, recent popularity, repeat rates;
:mod:`foundation_rec.signals`); *strict* reads only the texts and the history; ``both`` gives each its own row.
``--methods`` adds the model's parts as rows on the same users (generation alone, the content prior
alone), ``--history both`` scores every row with the user's own items kept and excluded (the table's
*history* column names which), and
``--baselines`` adds the practitioner anchors and SASRec on the same users and split.
``benchmarks/transfer.py`` calls :func:`run_target`, the one zero-shot driver.

A target whose platform was in the checkpoint's pre-training corpora is refused unless
``--allow-seen-platform`` is given; such a result is labelled ``seen platform``. A checkpoint that
``foundation_rec.finetune`` fine-tuned on the target's own logs is evaluated there and labelled
``fine-tuned on this platform``, never zero-shot.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from . import defaults
from .api import DEFAULT, GENERATION, METHODS, PRIOR, FoundationRec, method_label
from .baselines import METHODS as BASELINES
from .baselines import evaluate_methods
from .checkpoint import read_config
from .content_prior import INFO as SCORER_INFO
from .corpora import load_corpus, resolve_names
from .corpora.readers import ON_BAD_LINE
from .errors import FoundationRecError, cli_errors, parse_flags
from .evaluate import evaluate_settings, markdown_table, write_report
from .idgen import PRECISIONS
from .paths import writable_dir
from .signals import PROTOCOLS, STRICT

HISTORY_SETTINGS = {"kept": (False,), "excluded": (True,), "both": (False, True)}


@dataclass
class ZeroShotArguments:
    """Which target, which checkpoint, how many users, which baselines, where results go."""

    target: str = field(metadata={"help": "target corpus: a name (yelp, steam, movielens-1m, movielens-100k, goodreads), 'targets', or a folder"})
    checkpoint: str = field(default="runs/pretrain/best", metadata={"help": "checkpoint directory written by pretrain"})
    data_dir: str | None = field(default=None, metadata={"help": "folder holding the corpora (default: see the README's Data section)"})
    max_users: int | None = field(default=None, metadata={"help": "evaluate a fixed-seed sample of this many users (reported as a sample)"})
    seed: int = field(default=0, metadata={"help": "seed of the user sample"})
    num_beams: int = field(default=defaults.NUM_BEAMS, metadata={"help": f"beams of the constrained beam search (at least {defaults.MIN_BEAMS})"})
    batch_size: int = field(default=defaults.BATCH_SIZE, metadata={"help": "users per beam-search batch"})
    methods: str = field(
        default=DEFAULT,
        metadata={"help": f"comma list of the model's methods, each its own row: {DEFAULT} (generation with the content prior, "
                  f"what ships), {GENERATION} (generation alone), content-prior (the prior alone)"},
    )
    history: str = field(default="kept", metadata={"help": "the user's own items in the ranked list: kept (repeat visits count), "
                                                           "excluded (left out before the top 10), or both (each its own row)"})
    content_prior: float | None = field(
        default=None,
        metadata={"help": "gamma of the prior: generation scores sum log p(token) / length + gamma * log prior(item | history) "
                  "(default: the checkpoint's, chosen on pool validation, or 30 for a checkpoint that records none; 0 without a "
                  "content scorer; 0: plain generation)"},
    )
    baselines: str = field(default="", metadata={"help": f"comma list of baselines to run on the same users: {', '.join(BASELINES)}, or 'all'"})
    allow_seen_platform: bool = field(default=False, metadata={"help": "evaluate even if the target's platform was pre-trained on (labelled so)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    id_precision: str = field(default=defaults.ID_PRECISION, metadata={"help": "arithmetic of the target's ID generation: fp32, or int8 (CPU only; about 1.5x "
                                                                "faster cold IDs on a CPU with AVX-512 VNNI, several times slower on one "
                                                                "without AVX-512; a few near-tied IDs differ, see benchmarks/RESULTS.md)"})
    on_bad_line: str = field(default="error", metadata={"help": "a bad line of a bring-your-own target (e.g. an item with an empty title): "
                                                               "error (stop, naming the file and line) or skip (drop it and count it)"})
    protocol: str = field(default=defaults.PROTOCOL, metadata={"help": "strict (item texts and the user's own history only), counts (also the target's "
                                                            "training-split counts: popularity, recent popularity, repeat rates; nothing trained "
                                                            "on them; the default), or both (each its own row)"})
    out: str = field(default="runs/zeroshot", metadata={"help": "folder for <target>.json and <target>.md"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def run_target(model: FoundationRec, name: str, args: ZeroShotArguments) -> list[dict]:
    """The one zero-shot driver: index target ``name`` (IDs, trie, counts), then score each requested method in each
    protocol (and history setting) on the same users through the harness; the requested baselines run beside them."""
    corpus = load_corpus(name, args.data_dir, on_bad_line=args.on_bad_line)
    for what, count in corpus.meta.get("skipped_lines", {}).items():
        print(f"{corpus.name}: skipped {count} bad line(s) [{what}]", file=sys.stderr)
    tuned = (model.fine_tuned_on or {}).get("platform") == corpus.platform  # a checkpoint fine-tuned on this very platform's logs
    seen = corpus.platform in model.pretrained_platforms
    if seen and not tuned and not args.allow_seen_platform:
        raise FoundationRecError(
            f"target {corpus.name!r} is on platform {corpus.platform!r}, which the checkpoint was pre-trained on; "
            "pick an unseen platform or pass --allow-seen-platform (the result is then labelled so)"
        )
    start = time.perf_counter()
    catalog = model.index_catalog(corpus, progress=args.progress)
    index_seconds = round(time.perf_counter() - start, 1)
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    results = []
    for method in args.methods.split(","):
        for protocol in protocols if method != GENERATION else (STRICT,):
            rec = model.method_recommender(method, protocol, num_beams=args.num_beams, batch_size=args.batch_size, content_prior=args.content_prior)
            gamma = {GENERATION: 0.0, PRIOR: None}.get(method, args.content_prior if args.content_prior is not None else model.content_prior)
            for result in evaluate_settings(corpus, rec, method_label(method, protocol), HISTORY_SETTINGS[args.history], max_users=args.max_users,
                                            seed=args.seed, batch_size=args.batch_size, progress=args.progress):
                result.update(protocol=protocol, checkpoint=str(model.path), pretrained_corpora=model.pretrained_corpora,
                              setting="fine-tuned on this platform" if tuned else "seen platform" if seen else "zero-shot", index_seconds=index_seconds, id_precision=args.id_precision,
                              unique_ids=len(set(catalog.ids)) == len(catalog.ids), num_beams=args.num_beams, content_prior=gamma)
                if protocol != STRICT and catalog.counts is not None and catalog.counts.calibration is not None:
                    result["calibration"] = calibration_summary(catalog.counts.calibration)
                results.append(result)
    if args.baselines:
        methods = list(BASELINES) if args.baselines == "all" else [m.strip() for m in args.baselines.split(",") if m.strip()]
        results += evaluate_methods(corpus, methods, max_users=args.max_users, seed=args.seed, exclude_history=HISTORY_SETTINGS[args.history],
                                    progress=args.progress)
    return results


def calibration_summary(found) -> dict:
    """What a counts row records of the signal weights calibrated on the target's held-out items."""
    chosen = found.record["candidates"][found.choice]
    return {"choice": found.choice, "weights": list(found.weights), "repeat_shift": found.repeat_shift, "users": found.record["users"],
            "seconds": found.record["seconds"], "held_out_N@10": {k: chosen[k] for k in ("N@10 kept", "N@10 excluded")}}


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(ZeroShotArguments, description=__doc__.splitlines()[0])
    (args,) = parse_flags(parser, sys.argv[1:] if argv is None else argv)
    if args.num_beams < defaults.MIN_BEAMS:
        raise FoundationRecError(f"--num-beams {args.num_beams} is below {defaults.MIN_BEAMS}; Recall@10 needs at least {defaults.MIN_BEAMS} beams")
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        raise FoundationRecError(f"unknown --methods entry {unknown[0]!r}; use a comma list of {', '.join(METHODS)}")
    if args.history not in HISTORY_SETTINGS:
        raise FoundationRecError(f"--history {args.history!r} is not one of kept, excluded, both")
    if args.max_users is not None and args.max_users < 1:
        raise FoundationRecError(f"--max-users {args.max_users} must be positive; leave it out to evaluate every user")
    if args.content_prior is not None and args.content_prior < 0:
        raise FoundationRecError(f"--content-prior {args.content_prior:g} must be >= 0 (0: plain generation)")
    if args.protocol not in (*PROTOCOLS, "both"):
        raise FoundationRecError(f"--protocol {args.protocol!r} is not one of strict, counts, both")
    if args.id_precision not in PRECISIONS:
        raise FoundationRecError(f"--id-precision {args.id_precision!r} is not one of fp32, int8")
    if args.on_bad_line not in ON_BAD_LINE:
        raise FoundationRecError(f"--on-bad-line {args.on_bad_line!r} is not one of {', '.join(ON_BAD_LINE)}")
    names = resolve_names(args.target)
    writable_dir(args.out, "--out")
    read_config(args.checkpoint)
    has_scorer = (Path(args.checkpoint) / "recommender" / SCORER_INFO).is_file()  # checked before minutes of ID generation
    if args.content_prior and not has_scorer:
        raise FoundationRecError(f"--content-prior {args.content_prior:g} needs a checkpoint with a content scorer, and {args.checkpoint} has none "
                                 "(pre-train with --content-prior-epochs 4, or pass --content-prior 0)")
    if PRIOR in args.methods.split(",") and not has_scorer:
        raise FoundationRecError(f"--methods {PRIOR} needs a checkpoint with a content scorer, and {args.checkpoint} has none; leave {PRIOR} out")
    for name in names:  # a bad line of a target stops the command before the model loads (run_target reads the cache)
        load_corpus(name, args.data_dir, on_bad_line=args.on_bad_line)
    model = FoundationRec.from_pretrained(args.checkpoint, device=args.device, num_beams=args.num_beams, id_precision=args.id_precision)
    if args.content_prior is None:
        args.content_prior = model.content_prior
    for name in names:
        results = run_target(model, name, args)
        stem = Path(name).name
        write_report(results, args.out, stem, extra={"command": " ".join(["python -m foundation_rec.zeroshot", *(argv or sys.argv[1:])])})
        print(f"\n{stem} ({results[0]['setting']}, {'sample of ' if results[0]['sampled'] else ''}{results[0]['users_evaluated']:,} users, "
              f"catalog {results[0]['catalog_size']:,})\n{markdown_table(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
