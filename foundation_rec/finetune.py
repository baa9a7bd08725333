"""Fine-tune the foundation model on a platform's own logs: ``python -m foundation_rec.finetune --target steam``.

    python -m foundation_rec.finetune --target steam --checkpoint runs/pretrain/best --output-dir runs/finetune/steam
    python -m foundation_rec.finetune --target ./my-shop --users 1000          # the logs of 1,000 fixed-seed users
    python -m foundation_rec.finetune --target steam --resume                   # after a kill, the same arguments
    accelerate launch -m foundation_rec.finetune --target steam                 # the generative phases on several GPUs

The method goes on from the checkpoint on the target's training split (with ``--users N``, that of N fixed-seed
users: a platform whose logs are theirs; no validation or test item is ever trained on), in four stages:

1. ``prior``: the content prior's weights, and an offset per catalog item added to its text vector
   (:class:`~foundation_rec.content_prior.CatalogOffsets`, zero at the start), fitted with a full softmax over the
   catalog on the training sequences; the epoch is chosen on those users' validation items by their mean
   cross-entropy (``--prior-select``: steadier than N@10 on a few hundred users);
2. ``train``: IDGenRec's alternation from the checkpoint's models (:class:`~foundation_rec.train.Trainer`): the
   recommender phase, then the ID phase, with the IDs regenerated;
3. ``select``: the method as it ships (generation plus gamma times the prior, with the logs' counts and the signal
   weights calibrated on them) on up to ``--select-users`` users' validation items, for the untouched checkpoint, the fine-tuned prior with
   the checkpoint's generative model, and the fine-tuned models at each gamma, each scored per user by N@30 of its
   list (:data:`SELECT_K`; history kept and excluded averaged: top-heavy like N@10, but a hit at rank 11-30 counts,
   so the noise of a few hundred users is smaller). A fine-tuned candidate is kept only when it beats the untouched
   checkpoint by more than one standard error of the paired per-user difference, so fine-tuning on few logs falls
   back to the zero-shot default;
4. ``test``: the chosen model's N@10 on the test users next to the zero-shot default's, on the same users and logs.

``OUTPUT_DIR/best`` is a checkpoint like any other (the API, ``zeroshot`` and the demo load it); its
``foundation_rec.json`` records ``finetune`` (target, users, choice), and ``zeroshot`` labels its own platform's
rows ``fine-tuned`` instead of zero-shot. ``--init random`` runs the same recipe from randomly initialised models
of the checkpoint's architecture (what the foundation is measured against; nothing to fall back on).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser

from . import atomic, checkpoint, defaults
from .api import DEFAULT, FoundationRec
from .backbones import resolve_device
from .bundle import ModelBundle
from .content import MINILM_DIM
from .content_prior import FILE as SCORER_FILE
from .content_prior import INFO as SCORER_INFO
from .content_prior import SELECT_STATISTICS, ContentScorer, ScorerConfig, load_scorer, train_scorer
from .corpora import load_corpus
from .errors import FoundationRecError, cli_errors, parse_flags
from .evaluate import drop_history
from .evaluate import examples as split_examples
from .metrics import ndcg_gains, target_ranks
from .paths import writable_dir
from .pool import Pool, users_of
from .signals import COUNTS, PlatformCounts
from .splits import MAX_HISTORY
from .text_embeddings import item_vectors
from .train import Distributed, TrainConfig, Trainer

STAGES = ("prior", "train", "select", "test")
STATE = "finetune.json"
SELECT_GAMMAS = defaults.PRIOR_GAMMAS  # the fine-tuned models' weights on the prior tried at selection
TRAIN_VALID_USERS = 100  # validation users of the alternation's own model selection (strict, per gamma)
SELECT_K = 10 + MAX_HISTORY  # selection's per-user statistic is N@SELECT_K: the whole list the method returns (FINDINGS.md)


@dataclass
class FinetuneArguments:
    """Which platform, from which checkpoint, on how many users' logs, and where the fine-tuned model goes."""

    target: str = field(metadata={"help": "the platform: a corpus name (steam, yelp, movielens-1m, ...) or a bring-your-own folder"})
    checkpoint: str = field(default="runs/pretrain/best", metadata={"help": "the foundation checkpoint to start from (written by pretrain)"})
    output_dir: str | None = field(default=None, metadata={"help": "where best/, results.json and the stages go (default: runs/finetune/<target>)"})
    users: int = field(default=0, metadata={"help": "train on the logs of this many fixed-seed users (0: every user)"})
    init: str = field(default="foundation", metadata={"help": "foundation (the checkpoint's models) or random (the same architecture, "
                                                             "randomly initialised: the recipe from nothing)"})
    data_dir: str | None = field(default=None, metadata={"help": "folder holding the corpora (default: see the README's Data section)"})
    prior_epochs: int = field(default=8, metadata={"help": "epochs of the content prior's fine-tuning (the best on validation is kept)"})
    prior_lr: float = field(default=3e-3, metadata={"help": "learning rate of the content prior and its item offsets (FINDINGS.md: 3e-3 against 1e-2 and 1e-3)"})
    prior_select: str = field(default="loss", metadata={"help": "what picks the prior's epoch on the users' validation items: loss "
                                                                "(mean cross-entropy, steady on few users) or N@10"})
    rec_epochs: int = field(default=2, metadata={"help": "recommender epochs (teacher forcing on the current IDs)"})
    id_epochs: int = field(default=1, metadata={"help": "ID-generator epochs through the frozen recommender (0: keep the IDs)"})
    rec_lr: float = field(default=1e-3, metadata={"help": "recommender learning rate"})
    id_lr: float = field(default=1e-4, metadata={"help": "ID-generator learning rate"})
    id_users: int = field(default=1000, metadata={"help": "the ID phase trains on at most this many users' last windows (0: all)"})
    valid_users: int = field(default=500, metadata={"help": "validation users of the prior's epoch choice (0: all of the logs' users)"})
    select_users: int = field(default=1000, metadata={"help": "validation users of the selection among candidates (0: all of the logs' users; "
                                                              "more is steadier and slower: FINDINGS.md)"})
    test_users: int = field(default=2000, metadata={"help": "fixed-seed test users of the closing report (0: all), the README table's 2,000"})
    seed: int = field(default=42, metadata={"help": "seed of the user sample, data order and dropout"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    resume: bool = field(default=False, metadata={"help": "continue the run in OUTPUT_DIR after a stop (pass the other arguments unchanged)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def check_args(args: FinetuneArguments) -> None:
    if args.init not in ("foundation", "random"):
        raise FoundationRecError(f"--init {args.init!r} is not foundation or random")
    for name in ("users", "id_users", "valid_users", "select_users", "test_users", "rec_epochs", "id_epochs"):
        if getattr(args, name) < 0:
            raise FoundationRecError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.prior_epochs < 0 or not all(0 < getattr(args, f"{k}_lr") <= 1 for k in ("prior", "rec", "id")):
        raise FoundationRecError("--prior-epochs must be >= 0 and --prior-lr, --rec-lr and --id-lr in (0, 1]")
    if args.prior_select not in SELECT_STATISTICS:
        raise FoundationRecError(f"--prior-select {args.prior_select!r} is not {' or '.join(SELECT_STATISTICS)}")


class Run:
    """One fine-tuning run's folder: its arguments, the stages done, and where each stage writes."""

    def __init__(self, args: FinetuneArguments, main: bool):
        self.args, self.main = args, main
        self.dir = Path(args.output_dir)
        self.file = self.dir / STATE
        self.done: list[str] = []
        self.record: dict = {}
        self.seconds: dict[str, float] = {}  # each finished stage's wall seconds, kept across resumes
        self.started = time.perf_counter()
        recorded = {k: v for k, v in dataclasses.asdict(args).items() if k not in ("resume", "progress", "device")}
        if self.file.is_file():
            state = json.loads(self.file.read_text(encoding="utf-8"))
            if not args.resume:
                raise FoundationRecError(f"{self.dir} holds a fine-tuning run; pass --resume to continue it, or another --output-dir")
            flag_defaults = {f.name: f.default for f in dataclasses.fields(FinetuneArguments)}
            state["args"] = {**{k: flag_defaults[k] for k in recorded if k not in state["args"]}, **state["args"]}  # flags added since: their defaults
            if state["args"] != recorded:
                changed = sorted(k for k in recorded if state["args"].get(k) != recorded[k])
                raise FoundationRecError(f"{self.dir} was fine-tuned with other arguments ({', '.join(changed)}); resume with the same ones")
            self.done, self.record, self.seconds = state["done"], state.get("record", {}), state.get("seconds", {})
        self.recorded = recorded

    def finish(self, stage: str, **record) -> None:
        """Mark ``stage`` done with its ``record`` and its wall seconds (since the last stage ended, or the run began)."""
        now = time.perf_counter()
        self.done.append(stage)
        self.record.update(record)
        self.seconds[stage], self.started = round(now - self.started, 1), now
        if self.main:
            atomic.write_json(self.file, {"args": self.recorded, "done": self.done, "record": self.record, "seconds": self.seconds})

    def fit_seconds(self) -> float | None:
        """Wall seconds of fitting (prior, train, select; not the closing test), over every resume; None when a stage's is unknown."""
        return round(sum(self.seconds[s] for s in STAGES[:3]), 1) if all(s in self.seconds for s in STAGES[:3]) else None


def fit_prior(scorer: ContentScorer, logs, vectors: torch.Tensor, args: FinetuneArguments, log) -> ContentScorer:
    """Stage 1: the content prior and its catalog offsets fitted on the logs' training sequences (a copy of ``scorer``)."""
    scorer = copy.deepcopy(scorer)
    item_ids = logs.items.data.column("item_id").to_pylist()
    scorer.fit_catalog(logs.name, item_ids)
    pool = Pool([logs])
    train, valid = pool.examples("train"), pool.examples("valid", args.valid_users or None, args.seed)
    if not len(train) or not len(valid):
        raise FoundationRecError(f"{logs.name}'s logs have no training sequences (every user has fewer than 3 items); fine-tuning needs "
                                 "users with at least 3 logged items, or use the zero-shot default")
    owner = torch.zeros(len(item_ids), dtype=torch.long)
    before = scorer.record
    config = ScorerConfig(epochs=args.prior_epochs, lr=args.prior_lr, batch_size=256, seed=args.seed, select=args.prior_select)
    train_scorer(lambda: scorer.catalog(vectors), owner, train, valid, config, pool.max_history, log, model=scorer)
    scorer.record = {**before, "finetune": scorer.record}
    scorer.train(False)
    return scorer


def initial_bundle(args: FinetuneArguments, config: dict, logs, device: torch.device) -> ModelBundle:
    """The models fine-tuning starts from: the checkpoint's, or (``--init random``) new ones of its architecture
    with an untrained content prior (text-kNN order)."""
    if args.init == "foundation":
        return ModelBundle.from_pretrained(args.checkpoint, device)
    from .pretrain import RunArguments, build_models

    run = RunArguments(**{k: v for k, v in config["run"].items() if k in {f.name for f in dataclasses.fields(RunArguments)}})
    bundle = build_models(run, config["preset"], device, Pool([logs]), args.seed, None)
    bundle.scorer = ContentScorer(MINILM_DIM, MAX_HISTORY)
    return bundle


def train_config(args: FinetuneArguments, config: dict) -> TrainConfig:
    """The alternation's schedule: the checkpoint's recipe, one round of this command's epochs and learning rates."""
    recipe = {k: v for k, v in config.get("train", {}).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    warmup = {"warmup_epochs": 1} if args.init == "random" else {"warmup_epochs": 0}
    return TrainConfig(**{**recipe, "rounds": 1, "rec_epochs": args.rec_epochs, "id_epochs": args.id_epochs, "rec_lr": args.rec_lr,
                          "id_lr": args.id_lr, "valid_users": min(args.valid_users or TRAIN_VALID_USERS, TRAIN_VALID_USERS), "test_users": 1,
                          "max_steps": 0, "seed": args.seed, **warmup})


def train_models(run: Run, bundle: ModelBundle, logs, config: dict, device: torch.device) -> None:
    """Stage 2: IDGenRec's alternation on the logs from the bundle (resumable in ``OUTPUT_DIR/train``); ``train/best``."""
    args = run.args
    train = train_config(args, config)
    run_config = {"run": config.get("run", {}), "preset": config.get("preset"), "train": dataclasses.asdict(train),
                  "stats": {logs.name: {"users": len(logs.sequences), "items": len(logs.items)}}}
    trainer = Trainer(train, Pool([logs]), bundle, run.dir / "train", run_config=run_config, progress=args.progress)
    trainer.stages = [s for s in trainer.stages if s[0] != "test"]  # the closing test is this command's own, on the test users
    trainer.id_users = args.id_users
    item_ids = logs.items.data.column("item_id").to_pylist()
    trainer.prior_vectors = bundle.scorer.prior_vectors(logs.name, item_ids, trainer.rec.item_vectors)
    saved = run.dir / "train" / "checkpoint"
    if (saved / checkpoint.CONFIG_NAME).is_file():
        trainer.restore(saved)
    trainer.run()


def candidate_folder(run: Run, name: str, models: Path, scorer: Path, config: dict) -> Path:
    """A checkpoint folder made of ``models``' recommender and generator, the scorer files in ``scorer``, and ``config``."""
    folder = run.dir / "candidates" / name
    if run.main and not (folder / checkpoint.CONFIG_NAME).is_file():
        with atomic.staged_dir(folder) as tmp:
            for part in ("recommender", "generator", "ids"):
                if (models / part).is_dir():
                    shutil.copytree(models / part, tmp / part)
            for file in (SCORER_FILE, SCORER_INFO):
                shutil.copy2(scorer / file, tmp / "recommender" / file)
            atomic.write_json(tmp / checkpoint.CONFIG_NAME, config)
    return folder


def per_user(model: FoundationRec, gamma: float, ex, k: int = SELECT_K) -> np.ndarray:
    """``[users]`` N@k of the shipped method on the current catalog (with its counts) at ``gamma``, history kept and
    excluded averaged, on examples ``ex``."""
    rec = model.method_recommender(DEFAULT, COUNTS, content_prior=gamma)
    ranked = np.concatenate([rec.recommend(ex.histories[lo : lo + 256], SELECT_K) for lo in range(0, len(ex), 256)])
    kept = ndcg_gains(target_ranks(ranked[:, :k], ex.targets), k)
    dropped = ndcg_gains(target_ranks(drop_history(ranked, ex.histories)[:, :k], ex.targets), k)
    return (kept + dropped) / 2


def choose(scores: dict[str, np.ndarray], untouched: str | None) -> str:
    """The candidate with the best mean score; with an ``untouched`` model, another replaces it only when it is
    better by more than one standard error of the paired per-user difference."""
    best = max(scores, key=lambda name: (scores[name].mean(), name == untouched))
    if untouched is None or best == untouched:
        return best
    diff = scores[best] - scores[untouched]
    return best if diff.mean() > diff.std(ddof=1) / np.sqrt(len(diff)) else untouched


def select(run: Run, logs, counts: PlatformCounts, base: dict) -> tuple[str, float, dict]:
    """Stage 3: the candidates on the logs' validation users (module docstring); ``(folder, gamma, record)`` of the choice."""
    args, start = run.args, time.perf_counter()
    ex = split_examples(logs, "valid", args.select_users or None, args.seed)
    trained = run.dir / "train" / "best"
    gamma0 = float(base.get("content_prior", defaults.CONTENT_PRIOR))
    options: list[tuple[str, Path, tuple[float, ...]]] = [("fine-tuned", trained, SELECT_GAMMAS)]
    if args.init == "foundation":
        prior = candidate_folder(run, "prior", Path(args.checkpoint), run.dir / "prior", base)
        options = [("zero-shot", Path(args.checkpoint), (gamma0,)), ("fine-tuned prior", prior, (gamma0,)), *options]
    scores, where = {}, {}
    for n, (name, folder, gammas) in enumerate(options):
        model = FoundationRec.from_pretrained(folder, device=args.device)
        model.index_catalog(logs, progress=args.progress, counts=counts)
        for gamma in gammas:
            label = name if len(gammas) == 1 else f"{name} gamma {gamma:g}"
            scores[label], where[label] = per_user(model, gamma, ex), (folder, gamma)
            print(f"select: {label}: validation N@{SELECT_K} {scores[label].mean():.4f} ({len(ex):,} users; {n + 1}/{len(options)} models, "
                  f"{time.perf_counter() - start:.0f} s)", flush=True)
    choice = choose(scores, "zero-shot" if args.init == "foundation" else None)
    record = {"choice": choice, "validation_users": len(ex), f"validation_N@{SELECT_K}": {k: round(float(v.mean()), 5) for k, v in scores.items()},
              "seconds": round(time.perf_counter() - start, 1)}
    return str(where[choice][0]), where[choice][1], record


def write_best(run: Run, folder: Path, gamma: float, record: dict, logs, base: dict) -> None:
    """``OUTPUT_DIR/best``: the chosen candidate with its gamma and what fine-tuning did, in ``foundation_rec.json``
    (its ``corpora`` stay the pre-training pool's: none from random initialisation)."""
    config = checkpoint.read_config(folder)
    config["content_prior"] = gamma
    config["corpora"] = list(base.get("corpora", [])) if run.args.init == "foundation" else []
    config["finetune"] = {"target": logs.name, "platform": logs.platform, "users": len(logs.sequences),
                          "users_total": logs.meta.get("users_total", len(logs.sequences)), "init": run.args.init,
                          "from": str(run.args.checkpoint), "args": run.recorded, **record}
    if run.main:
        with atomic.staged_dir(run.dir / "best") as tmp:
            for part in ("recommender", "generator", "ids"):
                if (folder / part).is_dir():
                    shutil.copytree(folder / part, tmp / part)
            atomic.write_json(tmp / checkpoint.CONFIG_NAME, config)


def test(run: Run, corpus, counts: PlatformCounts) -> dict:
    """Stage 4: N@10 of the fine-tuned and the zero-shot default on the same test users, with the same logs' counts."""
    from .evaluate import evaluate_settings

    args, rows = run.args, {}
    arms = [("fine-tuned", run.dir / "best")] + ([("zero-shot", Path(args.checkpoint))] if args.init == "foundation" else [])
    for name, folder in arms:
        model = FoundationRec.from_pretrained(folder, device=args.device)
        catalog = model.index_catalog(corpus, progress=args.progress, counts=counts)
        rec = model.method_recommender(DEFAULT, COUNTS, catalog=catalog)
        results = evaluate_settings(corpus, rec, name, (False, True), max_users=args.test_users or None, progress=args.progress)
        rows[name] = {("excluded" if r["exclude_history"] else "kept"): r["metrics"] for r in results} | {"users": results[0]["users_evaluated"]}
    return rows


def load_logs(args: FinetuneArguments):
    """``(corpus, logs)``: the whole target (its test users) and the platform's logs (``--users`` fixed-seed users of it)."""
    corpus = load_corpus(args.target, args.data_dir)
    if args.users > len(corpus.sequences):
        raise FoundationRecError(f"--users {args.users:,} is more than {corpus.name}'s {len(corpus.sequences):,} users; pass at most that, or 0 for all")
    return corpus, users_of(corpus, args.users or None, args.seed)


def read_checkpoint(path: str) -> dict:
    config = checkpoint.read_config(path)
    if load_scorer(Path(path) / "recommender") is None:
        raise FoundationRecError(f"{path} has no content prior (recommender/{SCORER_INFO}); fine-tune a checkpoint pre-trained with "
                                 "--content-prior-epochs > 0, such as the one the README's main command builds")
    return config


@cli_errors
def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    parser = HfArgumentParser(FinetuneArguments, description=__doc__.splitlines()[0])
    (args,) = parse_flags(parser, sys.argv[1:] if argv is None else argv)
    check_args(args)
    config = read_checkpoint(args.checkpoint)
    corpus, logs = load_logs(args)
    args.output_dir = args.output_dir or f"runs/finetune/{Path(args.target).name}"
    writable_dir(args.output_dir, "--output-dir")
    from .pretrain import _process_group

    device = _process_group(resolve_device(args.device))
    dist = Distributed(device)
    run = Run(args, dist.main)
    dist.barrier()  # every process has read the run's state before the first stage writes it
    counts = PlatformCounts.from_corpus(logs)  # the kept users' training split, as zeroshot counts a corpus
    log = print if args.progress and dist.main else (lambda _: None)
    print(f"fine-tuning on {logs.name}: {len(logs.sequences):,} users' logs of {len(corpus.sequences):,}, {len(logs.items):,} items, "
          f"from {'the foundation checkpoint ' + args.checkpoint if args.init == 'foundation' else 'random initialisation'}", flush=True)
    bundle = initial_bundle(args, config, logs, device)
    if "prior" not in run.done:
        print(f"stage 1/4 prior: the content prior and its item offsets on {logs.name}'s training sequences", flush=True)
        vectors, _ = item_vectors(logs.items.data.column("text").to_pylist(), f"{logs.name} items", args.progress)
        bundle.scorer = fit_prior(bundle.scorer, logs, vectors, args, log)
        if dist.main:
            with atomic.staged_dir(run.dir / "prior") as tmp:
                bundle.scorer.save(tmp)
        run.finish("prior", prior=bundle.scorer.record["finetune"])
    else:
        bundle.scorer = load_scorer(run.dir / "prior")
    if "train" not in run.done:
        print(f"stage 2/4 train: the recommender phase, then the ID phase with the IDs regenerated ({args.rec_epochs} + {args.id_epochs} epochs)", flush=True)
        train_models(run, bundle, logs, config, device)
        run.finish("train")  # its validation history is in train/metrics.jsonl
    dist.barrier()
    if not dist.main:
        return 0
    if "select" not in run.done:
        print("stage 3/4 select: the shipped method on the logs' validation users", flush=True)
        folder, gamma, record = select(run, logs, counts, config)
        write_best(run, Path(folder), gamma, record, logs, config)
        run.finish("select", select=record)
    if "test" not in run.done:
        print(f"stage 4/4 test: {args.test_users or 'all':} test users of {corpus.name}", flush=True)
        run.finish("test", test=test(run, corpus, counts))
    report(run, corpus, start)
    return 0


def report(run: Run, corpus, start: float) -> None:
    """The closing words: the test N@10 next to the zero-shot default's, where the checkpoint is, the command that uses it."""
    rows, choice = run.record["test"], run.record["select"]["choice"]
    results = {"target": corpus.name, "args": run.recorded, "select": run.record["select"], "test": rows, "prior": run.record.get("prior"),
               "seconds": round(time.perf_counter() - start, 1), "stage_seconds": run.seconds, "fit_seconds": run.fit_seconds()}
    atomic.write_json(run.dir / "results.json", results)
    fine, zero = rows["fine-tuned"], rows.get("zero-shot")
    against = f", against the zero-shot default's {zero['kept']['N@10']:.4f} / {zero['excluded']['N@10']:.4f} on the same users and logs" if zero else ""
    kept = "" if choice != "zero-shot" else " Selection kept the untouched foundation model: no fine-tuned candidate beat it on validation by more than its noise."
    print(f"\nDone in {(time.perf_counter() - start) / 60:.1f} min. Fine-tuned on {run.record.get('prior', {}).get('examples', 0):,} training examples of "
          f"{corpus.name} ({choice} chosen on validation). On {fine['users']:,} test users it scores N@10 {fine['kept']['N@10']:.4f} "
          f"(history kept) / {fine['excluded']['N@10']:.4f} (excluded){against}.{kept}\n"
          f"The checkpoint is in {run.dir / 'best'}. Use it: python -m foundation_rec.zeroshot --target {corpus.name} --checkpoint {run.dir / 'best'}"
          f"  (or FoundationRec.from_pretrained({str(run.dir / 'best')!r}), or the demo's --checkpoint)")


if __name__ == "__main__":
    sys.exit(main())
