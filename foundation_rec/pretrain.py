"""Pre-train the ID generator and the base recommender on the corpus pool (IDGenRec's alternating training).

    python -m foundation_rec.pretrain --corpora all
    python -m foundation_rec.pretrain --corpora all --preset smollm2-135m --lora --device cuda
    python -m foundation_rec.pretrain --resume runs/pretrain/checkpoint
    python -m foundation_rec.pretrain --corpora amazon2014-beauty --init-from runs/pretrain/best --output-dir runs/beauty
    accelerate launch -m foundation_rec.pretrain --corpora all     # several processes (DDP-style)

``--preset auto`` (default) is ``minilm-t5``: a 4+4-layer T5 ID generator and a 4-layer Llama
recommender (``minilm-causal``, sequence objective, content vectors), both over all-MiniLM-L6-v2's
frozen pretrained token space, on 300 users per corpus; end to end in 39 minutes on 2 cores
(measured); with CUDA the same recipe on the whole pool (:data:`GPU_RECIPES`). The earlier
from-scratch recipe (``t5-cpu``: counted vocabulary, no content) stays available. Each preset sets
training defaults (:data:`RECIPES`); any flag given on the command line wins. Outputs in
``--output-dir``: ``checkpoint/`` (latest, resumable), ``best/`` (best validation score),
``metrics.jsonl`` and ``results.json``; see :mod:`foundation_rec.checkpoint` for the layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import HfArgumentParser

from . import atomic, checkpoint
from .backbones import PRETRAINED_SPACE_PRESETS, SCRATCH_PRESETS, BackboneConfig, load_backbone, resolve_device
from .bundle import ModelBundle, share_tokenizer
from .content import MINILM_DIM, ContentProjection
from .content_prior import ScorerConfig, train_on_pool
from .corpora import load_corpora
from .errors import FoundationRecError, cli_errors, parse_flags
from .idgen import IDGenConfig, IDGenerator
from .paths import writable_dir
from .pool import Pool, sample_corpus
from .train import TrainConfig, Trainer

# Training defaults per preset (flags override them). The CPU recipes train one round on 300 users per corpus
# (3,000 users and their items over the 10 Amazon corpora) with a decoder-only recommender and the sequence
# objective; GPU_RECIPES scale them up. With --backbone the recipe's recommender preset and objective are dropped.
RECOMMENDER_KEYS = ("rec_preset", "rec_objective")
_CPU_ROUND = {
    "rec_objective": "sequence",
    "users_per_corpus": 300,
    "id_examples": "last",
    "valid_users": 20,
    "test_users": 50,
    "id_beams": 4,
    "id_max_tokens": 6,
    "id_input_tokens": 64,
    "warmup_lr": 2e-3,
    "precision": "fp32",  # bf16 autocast turned the from-scratch T5's warm-up loss into NaN on an H100
}
RECIPES: dict[str, dict] = {
    "tiny": {"users_per_corpus": 20, "valid_users": 10, "rec_batch_size": 8, "id_batch_size": 4, "max_prompt_tokens": 96, "precision": "fp32"},
    "t5-cpu": {**_CPU_ROUND, "rec_preset": "causal-cpu", "rec_epochs": 4},
    # the zero-shot recipe: both models over the frozen MiniLM token space, content vectors in the history
    "minilm-t5": {**_CPU_ROUND, "rec_preset": "minilm-causal", "content_vectors": True, "rec_epochs": 3, "rec_lr": 2e-3,
                  "warmup_items": 3000, "id_gen_batch_size": 256, "content_prior_epochs": 4},
    "tiny-minilm": {"rec_preset": "tiny-minilm-causal", "rec_objective": "sequence", "content_vectors": True, "content_prior_epochs": 1, "users_per_corpus": 20,
                    "valid_users": 10, "rec_batch_size": 8, "id_batch_size": 4, "max_prompt_tokens": 96, "precision": "fp32"},
    "t5-small": {"users_per_corpus": 0, "rounds": 3, "rec_epochs": 3, "rec_batch_size": 64, "id_batch_size": 16, "valid_users": 200},
    "smollm2-135m": {
        "users_per_corpus": 0,
        "rounds": 3,
        "rec_epochs": 3,
        "warmup_epochs": 0,  # the instruct model writes tags from its prompt; no keyword warm-up needed
        "rec_batch_size": 32,
        "id_batch_size": 8,
        "rec_lr": 2e-4,
        "id_lr": 5e-5,
        "valid_users": 200,
    },
}


# On CUDA the zero-shot recipe trains on the whole pool (every user and item), two rounds, bigger batches.
GPU_RECIPES: dict[str, dict] = {
    "minilm-t5": {"users_per_corpus": 0, "rounds": 2, "warmup_items": 20000, "rec_batch_size": 64, "id_batch_size": 16,
                  "id_gen_batch_size": 512, "valid_users": 200, "test_users": 0, "precision": "fp32"},
}


@dataclass
class RunArguments:
    """What to train on, with which model, on which device, and where the outputs go."""

    corpora: str = field(default="all", metadata={"help": "corpora to pre-train on: all (the Amazon pool), a name, a comma list or a folder"})
    data_dir: str | None = field(default=None, metadata={"help": "folder holding the corpora (default: see the README's Data section)"})
    preset: str = field(default="auto", metadata={"help": f"auto (minilm-t5: its CPU recipe, or its whole-pool recipe with CUDA) or one of {', '.join(RECIPES)}"})
    rec_preset: str | None = field(
        default=None,
        metadata={"help": "the recommender's preset when it differs from the generator's (e.g. causal-cpu with --rec-objective sequence); same vocabulary"},
    )
    backbone: str | None = field(default=None, metadata={"help": "Hugging Face model name or local path for both models instead of the preset's"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters instead of the full models"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (with --lora)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "load the backbones in 4 bits (bitsandbytes; CUDA only; use with --lora)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    output_dir: str = field(default="runs/pretrain", metadata={"help": "where checkpoint/, best/, metrics.jsonl and results.json go"})
    resume: str | None = field(
        default=None, metadata={"help": "continue the run in OUTPUT_DIR from OUTPUT_DIR/checkpoint (pass the other arguments unchanged)"}
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "start from the recommender and ID generator of this checkpoint (e.g. runs/pretrain/best) with a new schedule: "
                  "train longer, or fine-tune on other corpora; --preset then only picks the recipe"},
    )
    users_per_corpus: int = field(default=0, metadata={"help": "train on a seeded sample of this many users per corpus and their items (0: all)"})
    # the ID settings' defaults are IDGenConfig's (IDGenConfig.from_run turns these flags into one)
    id_beams: int = field(default=IDGenConfig.num_beams, metadata={"help": "candidates per item when generating IDs (diverse beam search)"})
    id_max_tokens: int = field(default=IDGenConfig.max_id_tokens, metadata={"help": "longest generated ID, in tokens"})
    id_input_tokens: int = field(default=IDGenConfig.max_input_tokens, metadata={"help": "item text tokens the ID generator reads"})
    id_gen_batch_size: int = field(default=IDGenConfig.batch_size, metadata={"help": "items per forward pass when generating IDs (a GPU takes 256 or more)"})
    id_extractive: str = field(
        default="auto", metadata={"help": "IDs only from the item's own text tokens: yes, no, or auto (yes for the from-scratch presets tiny and t5-cpu)"}
    )
    content_vectors: bool = field(
        default=False,
        metadata={"help": "content-aware history: add each history item's frozen all-MiniLM-L6-v2 text vector, projected, to its ID in the prompt"},
    )
    content_prior_epochs: int = field(
        default=0,
        metadata={"help": "epochs of the content prior (a next-item scorer over the items' frozen MiniLM text vectors, used by zero-shot "
                  "generation; see foundation_rec.content_prior); 0: none"},
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def parse_args(argv: list[str] | None) -> tuple[RunArguments, TrainConfig, str]:
    """Parse flags; the preset's :data:`RECIPES` entry supplies the defaults of flags not given."""
    parser = HfArgumentParser((RunArguments, TrainConfig), description=__doc__.splitlines()[0])
    argv = sys.argv[1:] if argv is None else list(argv)
    run, _ = parse_flags(parser, argv)
    preset = run.preset
    if preset == "auto":
        preset = "minilm-t5"  # the zero-shot recipe (GPU_RECIPES scales it up on CUDA)
    if preset in SCRATCH_PRESETS and preset not in RECIPES:
        generator = "minilm-t5" if preset in PRETRAINED_SPACE_PRESETS else "t5-cpu"
        raise FoundationRecError(f"preset {preset!r} is for the recommender only; pass --preset {generator} --rec-preset {preset}")
    if preset not in RECIPES:
        raise FoundationRecError(f"unknown preset {preset!r}; use auto or one of {', '.join(RECIPES)}")
    recipe = RECIPES[preset]
    if resolve_device(run.device).type == "cuda":
        recipe = {**recipe, **GPU_RECIPES.get(preset, {})}
    if run.backbone is not None:
        recipe = {k: v for k, v in recipe.items() if k not in RECOMMENDER_KEYS}
    parser.set_defaults(**recipe)
    run, train = parse_flags(parser, argv)
    if run.rec_preset is not None and (run.rec_preset not in SCRATCH_PRESETS or preset not in SCRATCH_PRESETS or run.backbone):
        raise FoundationRecError(
            f"--rec-preset {run.rec_preset!r} needs from-scratch presets for both models (one shared vocabulary); use one of {', '.join(SCRATCH_PRESETS)}"
        )
    if run.id_extractive not in ("auto", "yes", "no"):
        raise FoundationRecError(f"--id-extractive {run.id_extractive!r} is not auto, yes or no; pick one of those")
    if run.content_prior_epochs < 0:
        raise FoundationRecError(f"--content-prior-epochs must be >= 0 (0: no content prior), got {run.content_prior_epochs}")
    if run.users_per_corpus < 0:
        raise FoundationRecError(f"--users-per-corpus must be >= 0 (0: all users), got {run.users_per_corpus}")
    for name in ("id_beams", "id_max_tokens", "id_input_tokens", "id_gen_batch_size", "lora_r"):
        if getattr(run, name) < 1:
            raise FoundationRecError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(run, name)}")
    if run.id_extractive == "auto":
        run.id_extractive = "yes" if preset in SCRATCH_PRESETS and run.backbone is None else "no"
    return run, train, preset


def _process_group(device: torch.device) -> torch.device:
    """Under ``accelerate launch`` (``WORLD_SIZE`` > 1) join the process group; return this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    from accelerate import PartialState

    return PartialState(cpu=device.type == "cpu").device


def build_pool(run: RunArguments, seed: int) -> Pool:
    """The corpora named by ``--corpora``, each cut to a seeded sample of ``--users-per-corpus`` users."""
    datasets.disable_progress_bars()
    corpora = load_corpora(run.corpora, run.data_dir)
    return Pool([sample_corpus(c, run.users_per_corpus or None, seed) for c in corpora], sources=corpora)


def build_models(run: RunArguments, preset: str, device: torch.device, pool: Pool, seed: int, saved: Path | None) -> ModelBundle:
    """The models to train: the ones saved in checkpoint ``saved``, or new ones from the preset / backbone (no content prior yet)."""
    if saved is not None:
        return ModelBundle.from_pretrained(saved, device)
    base = {
        "preset": None if run.backbone else preset,
        "name_or_path": run.backbone,
        "lora_r": run.lora_r if run.lora else 0,
        "load_in_4bit": run.load_in_4bit,
        "device": str(device),
    }
    texts = pool.texts()
    rec_preset = {"preset": run.rec_preset} if run.rec_preset else {}
    rec = load_backbone(BackboneConfig(**{**base, **rec_preset}, seed=seed), tokenizer_texts=texts)
    gen = load_backbone(BackboneConfig(**base, seed=seed + 1), tokenizer_texts=texts)
    width = int(rec.hf_model.get_input_embeddings().weight.shape[1])
    # started at the scale of the token embeddings (rows of norm ~2 in the MiniLM space), so the history's content is heard from step one
    content = ContentProjection(MINILM_DIM, width, init_std=2.0 / width**0.5).to(device) if run.content_vectors else None
    share_tokenizer(rec, gen)
    return ModelBundle(rec, IDGenerator(gen, IDGenConfig.from_run(dataclasses.asdict(run))), content)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """Run (or resume) pre-training; print the validation history and the test result of the best model."""
    start = time.perf_counter()
    run, train, preset = parse_args(argv)
    train.check()  # every numeric flag is range-checked here, before any work
    device = _process_group(resolve_device(run.device))
    resume = None
    if run.resume and run.init_from:
        raise FoundationRecError("--resume continues a run and --init-from starts a new one from a checkpoint's models; pass only one")
    if run.resume:
        resume = Path(run.resume)
        checkpoint.read_config(resume)
        run.output_dir = str(resume.parent)  # the run goes on where it was
    if run.init_from:
        if run.backbone or run.lora or run.load_in_4bit:
            raise FoundationRecError("--init-from takes the models (and any LoRA adapters) from the checkpoint; drop --backbone, --lora and --load-in-4bit")
        checkpoint.read_config(run.init_from)
    writable_dir(run.output_dir, "--output-dir")
    pool = build_pool(run, train.seed)
    saved = resume or (Path(run.init_from) if run.init_from else None)
    bundle = build_models(run, preset, device, pool, train.seed, saved)
    if bundle.scorer is None and run.content_prior_epochs:
        bundle.scorer = train_on_pool(pool, ScorerConfig(epochs=run.content_prior_epochs, seed=train.seed), progress=run.progress)
    run_config = {"run": {**dataclasses.asdict(run), "resume": None}, "preset": preset, "train": dataclasses.asdict(train), "stats": _stats(pool)}
    trainer = Trainer(train, pool, bundle, run.output_dir, run_config=run_config, progress=run.progress)
    if resume is not None:
        trainer.restore(resume)
    result = trainer.run()
    if trainer.dist.main:
        seconds = round(time.perf_counter() - start, 1)
        summary = {"seconds": seconds, "preset": preset, "best_valid_N@10": result["best_valid"]}
        summary["test"] = result["test"].get("pooled", {})
        print(json.dumps(summary, indent=2))
        anchors = pool_anchors(trainer)
        results_file = Path(run.output_dir) / "results.json"
        if results_file.is_file():  # the anchors next to the shipped method's validation score, on the same users
            atomic.write_json(results_file, {**json.loads(results_file.read_text()), "valid_anchors": anchors})
        against = "".join(f", {name} {n:.4f}" for name, n in anchors.items())
        print(f"\nDone in {seconds / 60:.1f} min. The foundation model is in {Path(run.output_dir) / 'best'}. On {len(trainer.valid_examples):,} "
              f"validation users of the pre-training pool, the shipped recommender (generation with the content prior at gamma "
              f"{trainer.gamma:g}, chosen on them, {trainer.config.eval_beams} beams) scores N@10 {result['best_valid'] or 0:.4f}{against} on the same users.\n"
              f"Next: python -m foundation_rec.zeroshot --target yelp --max-users 2000 --baselines text-knn,popularity")
    return 0


def pool_anchors(trainer: Trainer) -> dict[str, float]:
    """N@10 of the content prior alone and of text-kNN on the trainer's validation users (those its model selection used)."""
    from .baselines import TextKNN
    from .content_prior import PriorRanking
    from .evaluate import Examples, evaluate_examples
    from .text_embeddings import item_vectors

    vectors, scorer, ex = trainer.rec.item_vectors, trainer.rec.scorer, trainer.valid_examples
    if vectors is None:
        vectors, _ = item_vectors(trainer.texts, "pre-training pool", False)
    totals: dict[str, float] = {}
    for c in range(len(trainer.pool.corpora)):
        lo, hi, mine = int(trainer.pool.offsets[c]), int(trainer.pool.offsets[c + 1]), np.flatnonzero(ex.corpus == c)
        examples = Examples("valid", [ex.history(i) - lo for i in mine], np.asarray([ex.target(i) - lo for i in mine]), len(mine), 0, False)
        methods = {"text-kNN": TextKNN(vectors[lo:hi].numpy())}
        if scorer is not None:
            methods = {"the content prior alone": PriorRanking(scorer, vectors[lo:hi]), **methods}
        for name, rec in methods.items():
            totals[name] = totals.get(name, 0.0) + evaluate_examples(examples, rec, name, hi - lo)[0]["N@10"] * len(mine)
    return {name: total / max(len(ex), 1) for name, total in totals.items()}


def _stats(pool: Pool) -> dict:
    """Users and items per corpus, and the corpus's full user count (recorded in every checkpoint)."""
    return {
        c.name: {"users": len(c.sequences), "items": len(c.items), "users_total": c.meta.get("users_total", len(c.sequences))}
        for c in pool.corpora
    }


if __name__ == "__main__":
    raise SystemExit(main())
