"""Shared helpers for benchmark scripts: the machine and versions a result was measured on, and writing results.

Results go to ``benchmarks/results/`` unless ``$FOUNDATION_REC_RESULTS`` names another folder (the smoke tests' way of
running every benchmark on fixture data without touching the committed results)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from foundation_rec import atomic, defaults

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ["movielens-100k", "steam", "movielens-1m", "yelp", "goodreads"]


def results_dir() -> Path:
    """The folder results are written to: ``$FOUNDATION_REC_RESULTS``, else ``benchmarks/results``."""
    return Path(os.environ.get("FOUNDATION_REC_RESULTS") or RESULTS)


def command_line() -> str:
    """How this process was started, as a user would type it (``python -m benchmarks.NAME ...``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else [Path(sys.executable).name, sys.argv[0]]
    return " ".join(shlex.quote(a) for a in [*head, *sys.argv[1:]])


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
        "command": command_line(),
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


def write_results(name: str, payload: dict, markdown: str) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` atomically."""
    atomic.write_json(results_dir() / f"{name}.json", payload)
    atomic.write_text(results_dir() / f"{name}.md", markdown)


def checkpoint_run(doc: str, users_flag: str, users_default: int, extra=None, argv: list[str] | None = None):
    """Parse the flags shared by the scripts that evaluate a checkpoint on the targets; load it on ``--device``.

    Returns ``(args, model)``: ``--checkpoint``, ``--targets``, ``users_flag``, ``--seed``, ``--num-beams``,
    ``--threads``, ``--device``, ``--data-dir`` and ``--id-precision``, and the :class:`~foundation_rec.api.FoundationRec`
    they name. ``extra(parser)`` adds a script's own flags; ``argv`` replaces the command line.
    """
    import argparse

    import torch

    from foundation_rec.api import FoundationRec

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/pretrain/best", help="checkpoint directory written by pretrain")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma list of target corpora (names or bring-your-own folders)")
    parser.add_argument(users_flag, type=int, default=users_default, help="fixed-seed sample of test users per target")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    parser.add_argument("--num-beams", type=int, default=defaults.NUM_BEAMS, help="beams of the constrained beam search")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", default=None, help="data directory (default: the package's search order)")
    parser.add_argument("--id-precision", default="fp32", choices=("fp32", "int8"), help="arithmetic of catalog ID generation")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args, FoundationRec.from_pretrained(args.checkpoint, device=args.device, num_beams=args.num_beams,
                                                                                   id_precision=args.id_precision)
