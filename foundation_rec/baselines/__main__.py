"""Evaluate the reference recommenders on a target (zero-shot targets, in-domain Amazon corpora, or your own folder).

    python -m foundation_rec.baselines --target steam --methods random,popularity,text-knn,sasrec --max-users 2000
    python -m foundation_rec.baselines --target in-domain            # amazon2014-beauty and amazon2014-toys
    python -m foundation_rec.baselines --target ./my-shop --methods popularity,sasrec --max-epochs 20

Writes ``<out>/baselines.json`` and ``<out>/baselines.md`` (atomically) and prints the table.
"""

from __future__ import annotations

import argparse

import torch

from ..corpora import load_corpus, resolve_names
from ..errors import FoundationRecError, cli_errors
from ..evaluate import write_report
from . import METHODS, evaluate_methods

IN_DOMAIN = "amazon2014-beauty,amazon2014-toys"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m foundation_rec.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="corpus name, bring-your-own folder, comma list, 'targets' (the five) or 'in-domain'")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)} (default: all)")
    parser.add_argument("--max-users", type=int, default=None, help="evaluate a fixed-seed sample of N test users (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample, random baseline and SASRec (default 0)")
    parser.add_argument("--exclude-history", action="store_true", help="drop the user's history items from every ranking (default: keep)")
    parser.add_argument("--out", default="baselines-results", help="output folder (default ./baselines-results)")
    parser.add_argument("--data-dir", default=None, help="folder holding the corpora (default: the package's search order)")
    sas = parser.add_argument_group("sasrec")
    sas.add_argument("--max-epochs", type=int, default=200, help="epoch cap; early stopping on valid NDCG@10 usually ends sooner")
    sas.add_argument("--patience", type=int, default=5, help="epochs without valid improvement before stopping (default 5)")
    sas.add_argument("--time-budget", type=float, default=None, help="CPU seconds of SASRec training per corpus; ends after the epoch that exceeds it")
    sas.add_argument("--dropout", type=float, default=None, help="dropout (default 0.5 on Amazon corpora, 0.2 elsewhere)")
    sas.add_argument("--device", default="cpu", help="torch device for SASRec, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: on a shared 2-core machine a second thread that must wait for a busy core makes small ops 100x slower)"
    )
    return parser.parse_args(argv)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads < 1:
        raise FoundationRecError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise FoundationRecError(f"--methods is empty; name one or more of {', '.join(METHODS)}")
    results = []
    for name in resolve_names(IN_DOMAIN if args.target.strip() == "in-domain" else args.target):
        corpus = load_corpus(name, args.data_dir)
        results += evaluate_methods(
            corpus,
            methods,
            max_users=args.max_users,
            seed=args.seed,
            exclude_history=(args.exclude_history,),
            max_epochs=args.max_epochs,
            patience=args.patience,
            time_budget=args.time_budget,
            dropout=args.dropout,
            device=args.device,
        )
    json_path, md_path = write_report(results, args.out, "baselines", {"command_args": vars(args)})
    print(md_path.read_text(encoding="utf-8"), end="")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
