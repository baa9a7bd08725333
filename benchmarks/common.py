"""Shared helpers for benchmark scripts: the machine and versions a result was measured on, and writing results."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from foundation_rec import atomic, defaults

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    """Hardware and software facts to store next to every measurement."""
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def provenance(env: dict) -> str:
    """The sentence every result file opens with: the command, machine, date and versions of :func:`environment`."""
    return (
        f"`{env['command']}` on {env['gpu'] + ' with ' if env.get('gpu') else ''}{env['cpu']} ({env['cpu_count']} cores, torch threads {env['torch_threads']}), {env['date']}; "
        f"python {env['python']}, torch {env['torch']}, transformers {env['transformers']}."
    )


def write_table(name: str, payload: dict, title: str, note: str, header: list[str], rows: list[list]) -> None:
    """:func:`write_results` with a markdown file made of a title line, a note and one table (cells as text)."""
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(map(str, row)) + " |" for row in rows)]
    write_results(name, payload, "\n".join([title, "", note, "", *table]) + "\n")


class FixedRanking:
    """The harness's recommender protocol over rankings computed beforehand, one per history object of the examples."""

    def __init__(self, histories: list[np.ndarray], order: np.ndarray):
        self.rows = {id(h): row for h, row in zip(histories, order, strict=True)}

    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        return np.stack([self.rows[id(h)][:k] for h in histories])


def smollm2_diagnostic(doc: str, users: int, extra, run, title: str, note, header: list[str]) -> None:
    """The SmolLM2 world-knowledge diagnostics' ``main``: a checkpoint and SmolLM2-135M (CPU) loaded, ``run(model,
    backbone, target, args)`` rows per target, one table written (``note(args)`` follows the provenance)."""
    from foundation_rec.backbones import BackboneConfig, load_backbone

    args, model = checkpoint_run(doc, "--max-users", users, extra=extra)
    backbone = load_backbone(BackboneConfig(preset="smollm2-135m", device="cpu"))
    rows = [row for target in args.targets.split(",") for row in run(model, backbone, target, args)]
    env = environment()
    write_table(args.name, {"environment": env, "rows": rows, "args": vars(args)}, title, f"{provenance(env)} {note(args)}", header, rows)


def write_results(name: str, payload: dict, markdown: str) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` atomically."""
    atomic.write_json(RESULTS / f"{name}.json", payload)
    atomic.write_text(RESULTS / f"{name}.md", markdown)


TARGETS = ["movielens-100k", "steam", "movielens-1m", "yelp", "goodreads"]


def checkpoint_run(doc: str, users_flag: str, users_default: int, extra=None):
    """Parse the flags shared by the scripts that evaluate a checkpoint on the targets; load it on ``--device``.

    Returns ``(args, model)``: ``--checkpoint``, ``--targets``, ``users_flag``, ``--seed``, ``--num-beams``,
    ``--threads``, ``--device`` and ``--data-dir``, and the :class:`~foundation_rec.api.FoundationRec` they
    name. ``extra(parser)`` adds a script's own flags.
    """
    import argparse

    import torch

    from foundation_rec.api import FoundationRec

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/pretrain/best", help="checkpoint directory written by pretrain")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma list of target corpora")
    parser.add_argument(users_flag, type=int, default=users_default, help="fixed-seed sample of test users per target")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    parser.add_argument("--num-beams", type=int, default=defaults.NUM_BEAMS, help="beams of the constrained beam search")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", default=None, help="data directory (default: the package's search order)")
    parser.add_argument("--id-precision", default="fp32", choices=("fp32", "int8"), help="arithmetic of catalog ID generation")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args, FoundationRec.from_pretrained(args.checkpoint, device=args.device, num_beams=args.num_beams,
                                                                                   id_precision=args.id_precision)
