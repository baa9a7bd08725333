"""Zero-shot recommendation on an unseen platform: ``python -m foundation_rec.zeroshot --target yelp``.

1. builds the target corpus (a built-in name or a bring-your-own folder);
2. generates a unique textual ID for each of its items with the checkpoint's shared ID generator;
3. builds the target's prefix trie;
4. recommends for every target user with trie-constrained beam search and scores the result.

History is everything before the user's last item (at most 20 items), the truth is the last item,
ranked over the whole target catalog (Recall@5/10, NDCG@5/10). Nothing is trained on the target.
Two protocols, each its own row (``--protocol``): *strict* reads item texts and the user's own
history; *counts* (``idgenrec-zeroshot+counts``) also reads the target's training-split counts
(popularity, recent popularity, repeat rates; :mod:`foundation_rec.signals`).
``--baselines`` adds random, popularity, text-kNN and SASRec on the same users and split.

A target whose platform was in the checkpoint's pre-training corpora is refused unless
``--allow-seen-platform`` is given; such a result is labelled ``seen platform``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from .api import FoundationRec
from .baselines import METHODS, evaluate_methods
from .checkpoint import read_config
from .content_prior import INFO as SCORER_INFO
from .corpora import load_corpus, resolve_names
from .errors import FoundationRecError, cli_errors
from .evaluate import evaluate, markdown_table, write_report
from .idgen import PRECISIONS
from .paths import writable_dir
from .signals import COUNTS, PROTOCOLS, STRICT

METHOD = "idgenrec-zeroshot"
RERANK = "idgenrec-rerank"
METHOD_CHOICES = {"generate": (METHOD,), "rerank": (RERANK,), "both": (METHOD, RERANK)}


@dataclass
class ZeroShotArguments:
    """Which target, which checkpoint, how many users, which baselines, where results go."""

    target: str = field(metadata={"help": "target corpus: a name (yelp, steam, movielens-1m, movielens-100k, goodreads), 'targets', or a folder"})
    checkpoint: str = field(default="runs/pretrain/best", metadata={"help": "checkpoint directory written by pretrain"})
    data_dir: str | None = field(default=None, metadata={"help": "folder holding the corpora (default: see the README's Data section)"})
    max_users: int | None = field(default=None, metadata={"help": "evaluate a fixed-seed sample of this many users (reported as a sample)"})
    seed: int = field(default=0, metadata={"help": "seed of the user sample"})
    num_beams: int = field(default=20, metadata={"help": "beams of the constrained beam search (at least 10)"})
    batch_size: int = field(default=16, metadata={"help": "users per beam-search batch"})
    method: str = field(
        default="generate",
        metadata={"help": "generate (idgenrec-zeroshot: trie-constrained generation), rerank (idgenrec-rerank: the model's exact "
                  "scores over its beams plus the text-kNN top --rerank-pool), or both (each its own row)"},
    )
    rerank_pool: int = field(default=100, metadata={"help": "text-kNN candidates that idgenrec-rerank adds to the model's beams"})
    calibration: float = field(
        default=0.0,
        metadata={"help": "beta of the null-prompt calibration: every ID token scores log p(token | history) - beta * log p(token | no history); 0: plain"},
    )
    content_prior: float | None = field(
        default=None,
        metadata={"help": "gamma of the prior: generation scores sum log p(token) / length + gamma * log prior(item | history) "
                  "(default: 30 when the checkpoint has a content scorer, else 0; 0: plain generation)"},
    )
    baselines: str = field(default="", metadata={"help": f"comma list of baselines to run on the same users: {', '.join(METHODS)}, or 'all'"})
    allow_seen_platform: bool = field(default=False, metadata={"help": "evaluate even if the target's platform was pre-trained on (labelled so)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    id_precision: str = field(default="fp32", metadata={"help": "arithmetic of the target's ID generation: fp32, or int8 (CPU only, about 1.5x "
                                                                "faster cold IDs; a few near-tied IDs differ, see benchmarks/RESULTS.md)"})
    protocol: str = field(default="both", metadata={"help": "strict (item texts and the user's own history only), counts (also the target's "
                                                            "training-split counts: popularity, recent popularity, repeat rates; nothing trained "
                                                            "on them), or both (each its own row)"})
    out: str = field(default="runs/zeroshot", metadata={"help": "folder for <target>.json and <target>.md"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def run_target(model: FoundationRec, name: str, args: ZeroShotArguments) -> list[dict]:
    """Evaluate the model (and the requested baselines) on one target; return the result dicts."""
    corpus = load_corpus(name, args.data_dir)
    seen = corpus.platform in model.pretrained_platforms
    if seen and not args.allow_seen_platform:
        raise FoundationRecError(
            f"target {corpus.name!r} is on platform {corpus.platform!r}, which the checkpoint was pre-trained on; "
            "pick an unseen platform or pass --allow-seen-platform (the result is then labelled so)"
        )
    start = time.perf_counter()
    catalog = model.index_catalog(corpus, progress=args.progress)
    index_seconds = round(time.perf_counter() - start, 1)
    results = []
    runs = [(m, p) for m in METHOD_CHOICES[args.method] for p in (PROTOCOLS if args.protocol == "both" else (args.protocol,))
            if m == METHOD or p == STRICT]
    for method, protocol in runs:
        if method == METHOD:
            rec = model.catalog_recommender(num_beams=args.num_beams, batch_size=args.batch_size, calibration=args.calibration,
                                            content_prior=args.content_prior, protocol=protocol)
        else:
            rec = model.rerank_recommender(num_beams=args.num_beams, batch_size=args.batch_size, pool=args.rerank_pool, calibration=args.calibration)
        label = method if protocol == STRICT else f"{method}+{COUNTS}"
        result = evaluate(corpus, rec, label, max_users=args.max_users, seed=args.seed, batch_size=args.batch_size, progress=args.progress)
        result.update(
            protocol=protocol,
            checkpoint=str(model.path),
            pretrained_corpora=model.pretrained_corpora,
            setting="seen platform" if seen else "zero-shot",
            index_seconds=index_seconds,
            id_precision=args.id_precision,
            unique_ids=len(set(catalog.ids)) == len(catalog.ids),
            num_beams=args.num_beams,
            calibration=args.calibration,
            content_prior=args.content_prior if method == METHOD else 0.0,
            **({"rerank_pool": args.rerank_pool} if method == RERANK else {}),
        )
        results.append(result)
    if args.baselines:
        methods = list(METHODS) if args.baselines == "all" else [m.strip() for m in args.baselines.split(",") if m.strip()]
        results += evaluate_methods(corpus, methods, max_users=args.max_users, seed=args.seed, progress=args.progress)
    return results


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(ZeroShotArguments, description=__doc__.splitlines()[0])
    (args,) = parser.parse_args_into_dataclasses(sys.argv[1:] if argv is None else argv, look_for_args_file=False)
    if args.num_beams < 10:
        raise FoundationRecError(f"--num-beams {args.num_beams} is below 10; Recall@10 needs at least 10 beams")
    if args.method not in METHOD_CHOICES:
        raise FoundationRecError(f"unknown --method {args.method!r}; use generate, rerank or both")
    if args.calibration < 0:
        raise FoundationRecError(f"--calibration {args.calibration} must be >= 0 (0: plain scores, 1: pointwise mutual information)")
    if args.rerank_pool < 1:
        raise FoundationRecError(f"--rerank-pool {args.rerank_pool} must be at least 1")
    if args.max_users is not None and args.max_users < 1:
        raise FoundationRecError(f"--max-users {args.max_users} must be positive; leave it out to evaluate every user")
    if args.content_prior is not None and args.content_prior < 0:
        raise FoundationRecError(f"--content-prior {args.content_prior:g} must be >= 0 (0: plain generation)")
    if args.protocol not in (*PROTOCOLS, "both"):
        raise FoundationRecError(f"--protocol {args.protocol!r} is not one of strict, counts, both")
    if args.id_precision not in PRECISIONS:
        raise FoundationRecError(f"--id-precision {args.id_precision!r} is not one of fp32, int8")
    names = resolve_names(args.target)
    writable_dir(args.out, "--out")
    read_config(args.checkpoint)
    if args.content_prior and not (Path(args.checkpoint) / "recommender" / SCORER_INFO).is_file():
        raise FoundationRecError(f"--content-prior {args.content_prior:g} needs a checkpoint with a content scorer, and {args.checkpoint} has none "
                                 "(pre-train with --content-prior-epochs 4, or pass --content-prior 0)")
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
