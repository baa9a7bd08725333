"""Plot a pre-training run's metrics log (``metrics.jsonl``) as a PNG: loss per phase, and validation NDCG@10.

    python benchmarks/plot_losses.py runs/pretrain/metrics.jsonl -o runs/pretrain/losses.png

Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="metrics.jsonl written by python -m foundation_rec.pretrain")
    parser.add_argument("-o", "--output", type=Path, help="PNG to write (default: losses.png beside the log)")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in args.log.read_text(encoding="utf-8").splitlines() if line.strip()]
    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(11, 4))
    for phase in ("warmup", "rec", "id"):
        points = [(r["step"], r["loss"]) for r in records if r.get("phase") == phase and r.get("loss") is not None]
        if points:
            ax_loss.plot(*zip(*points), ".-", markersize=3, label=phase)
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="loss per phase")
    ax_loss.legend()
    valid = [(r["step"], r["N@10"]) for r in records if r.get("phase") == "valid" and "N@10" in r]
    if valid:
        ax_valid.plot(*zip(*valid), "o-", label="valid N@10")
    test = [(r["step"], r["N@10"]) for r in records if r.get("phase") == "test" and "N@10" in r]
    if test:
        ax_valid.plot(*zip(*test), "s", color="red", label="test N@10 (best model)")
    ax_valid.set(xlabel="optimizer step", ylabel="NDCG@10", title="validation (pooled)")
    if valid or test:
        ax_valid.legend()
    fig.tight_layout()
    out = args.output or args.log.with_name("losses.png")
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
