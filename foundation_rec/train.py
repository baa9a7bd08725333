"""Alternating training of the ID generator and the base recommender (IDGenRec), in one place.

The schedule (:func:`plan`) is a flat list of stages:

1. ``warmup``: the generator learns the extractive keyword IDs of every item (teacher forcing);
2. ``regen``: every item's ID is generated (unique, batched) and the per-corpus tries are rebuilt;
3. ``rounds`` times, in the order ``--alt-style`` gives:

   * ``rec`` (``rec_epochs``): teacher forcing of the recommender on the target item's current ID,
     one example per prefix of every user's training sequence (objective ``next``), or, with the
     objective ``sequence`` and a decoder-only recommender, one example per window of up to
     ``max_history`` items whose every item after the first is a target (sequence prompts, see
     :mod:`foundation_rec.prompts`); then ``valid``: a quick metric on a sample of validation users
     through trie-constrained beam search as ``zeroshot`` ships it (the content prior at its default
     gamma when the checkpoint has one, ``eval_beams`` as zeroshot's), and the best model is kept;
   * ``id`` (``id_epochs``): the recommender is frozen; for each history item in the prompt the
     generator gives per-token distributions over the current ID's tokens, and
     ``probabilities @ recommender input-embedding matrix`` (soft ID embeddings) replace the item's
     token embeddings in the prompt; the recommendation loss on the target's ID trains only the
     generator; then ``regen`` and ``valid`` again, so the regenerated IDs can be the best model;

4. ``test``: the best model (by validation) is evaluated once on the test split.

Soft embeddings need the generator and the recommender to share one tokenizer (one vocabulary, so
that probability ``p[v]`` of generator token ``v`` weights row ``v`` of the recommender's embedding
matrix); :class:`Trainer` checks this and refuses two different vocabularies, as IDGenRec uses T5
for both.

Resumability: the state after every stage, and every ``checkpoint_every`` steps inside an epoch,
is a checkpoint (:mod:`foundation_rec.checkpoint`). The data order and template choices of an epoch
are drawn from ``seed`` + stage + epoch, and torch's RNG is restored, so a resumed run repeats the
uninterrupted run. Under ``accelerate launch`` every process takes its slice of each global
batch, gradients are averaged across processes, and ID generation, validation and test are
sharded over processes (rank 0 writes).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import atomic, checkpoint, defaults
from .bundle import VOCAB_ERROR, ModelBundle
from .errors import FoundationRecError
from .evaluate import Examples, evaluate_examples
from .idgen import IDGenerator, IDTable, build_table, encode_ids, keyword_id, keyword_loss
from .pool import Pool, PoolExamples
from .prompts import PromptBuilder, sample_templates, user_textual_ids
from .recommender import Batch, CatalogRecommender
from .text_embeddings import item_vectors
from .trie import Trie

ALT_STYLES = ("rec_first", "id_first")
REC_OBJECTIVES = ("next", "sequence")
SELECT_METRIC = "N@10"
MAX_SKIPPED = 10  # non-finite steps a phase may skip before the run stops (and over 5% of its steps)


@dataclass
class TrainConfig:
    """The training schedule and its hyper-parameters (every field is a ``pretrain`` flag)."""

    rounds: int = field(default=1, metadata={"help": "alternation rounds (each: a recommender phase and an ID-generator phase)"})
    rec_epochs: int = field(default=1, metadata={"help": "recommender epochs per round"})
    id_epochs: int = field(default=1, metadata={"help": "ID-generator epochs per round"})
    warmup_epochs: int = field(default=1, metadata={"help": "epochs of generator warm-up on extractive keyword IDs before the first ID generation (0: none)"})
    alt_style: str = field(default="rec_first", metadata={"help": "phase order in a round: rec_first or id_first"})
    rec_lr: float = field(default=1e-3, metadata={"help": "recommender learning rate (AdamW, linear warm-up then decay per phase)"})
    id_lr: float = field(default=1e-4, metadata={"help": "ID-generator learning rate in the ID phase"})
    warmup_lr: float = field(default=1e-3, metadata={"help": "ID-generator learning rate in the keyword warm-up"})
    rec_batch_size: int = field(default=16, metadata={"help": "recommender batch size per process"})
    id_batch_size: int = field(default=8, metadata={"help": "ID-phase batch size per process (each example runs the generator on its history items)"})
    warmup_batch_size: int = field(default=32, metadata={"help": "warm-up batch size per process (items)"})
    warmup_items: int = field(default=0, metadata={"help": "warm up on a seeded sample of this many pool items (0: every item)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip (0: off)"})
    lr_warmup_ratio: float = field(default=0.05, metadata={"help": "share of each phase's steps with a linearly rising learning rate"})
    rec_objective: str = field(
        default="next",
        metadata={
            "help": "recommender loss: next (the target item of every training prefix, the paper's) or sequence "
            "(every item of each user's training sequence in one causal pass; needs a decoder-only recommender)"
        },
    )
    id_examples: str = field(default="all", metadata={"help": "ID-phase examples: all (every training prefix) or last (each user's longest prefix)"})
    user_ids: bool = field(default=False, metadata={"help": "put a user textual ID (words from the user's training items only) into the prompt"})
    max_prompt_tokens: int = field(default=160, metadata={"help": "prompt length cap; the oldest history items are dropped whole"})
    max_steps: int = field(default=0, metadata={"help": "stop training after this many optimizer steps over all phases (0: no cap)"})
    checkpoint_every: int = field(default=200, metadata={"help": "save a resumable checkpoint every N steps inside an epoch (and after every stage)"})
    log_every: int = field(default=10, metadata={"help": "write a metrics-log record every N steps"})
    valid_users: int = field(default=50, metadata={"help": "validation users per corpus for model selection (0: all)"})
    test_users: int = field(default=0, metadata={"help": "test users per corpus for the final evaluation (0: all)"})
    eval_beams: int = field(default=defaults.NUM_BEAMS, metadata={"help": "beams of the trie-constrained beam search in evaluation (zeroshot's, defaults.NUM_BEAMS)"})
    valid_generation: bool = field(
        default=False, metadata={"help": "at each validation also log pure generation's metrics (no content prior, gamma 0) as generation_N@10 etc.; doubles validation time"}
    )
    eval_batch_size: int = field(default=defaults.BATCH_SIZE, metadata={"help": "prompts per beam search in evaluation"})
    seed: int = field(default=42, metadata={"help": "seed of data order, templates, samples and dropout"})
    precision: str = field(default="auto", metadata={"help": "training arithmetic: auto (bf16 autocast on CUDA, fp32 on the CPU), bf16 (CUDA only) or fp32; the from-scratch recipes set fp32"})

    def check(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise FoundationRecError(f"unknown --precision {self.precision!r}; use auto, bf16 or fp32")
        if self.alt_style not in ALT_STYLES:
            raise FoundationRecError(f"unknown --alt-style {self.alt_style!r}; use rec_first or id_first")
        if self.rec_objective not in REC_OBJECTIVES:
            raise FoundationRecError(f"unknown --rec-objective {self.rec_objective!r}; use next or sequence")
        if self.id_examples not in ("all", "last"):
            raise FoundationRecError(f"unknown --id-examples {self.id_examples!r}; use all or last")
        for name in ("rounds", "rec_batch_size", "id_batch_size", "warmup_batch_size", "checkpoint_every", "eval_beams", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise FoundationRecError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("rec_lr", "id_lr", "warmup_lr"):
            if not 0 < getattr(self, name) <= 1:
                raise FoundationRecError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(self, name)}; e.g. 1e-3")
        if self.weight_decay < 0 or self.grad_clip < 0 or not 0 <= self.lr_warmup_ratio < 1:
            raise FoundationRecError("--weight-decay and --grad-clip must be >= 0 and --lr-warmup-ratio in [0, 1)")
        if self.max_prompt_tokens < 16:
            raise FoundationRecError(f"--max-prompt-tokens must be at least 16, got {self.max_prompt_tokens}")
        for name in ("rec_epochs", "id_epochs", "warmup_epochs", "warmup_items", "max_steps", "valid_users", "test_users"):
            if getattr(self, name) < 0:
                raise FoundationRecError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")


def plan(config: TrainConfig) -> list[tuple[str, int]]:
    """The stages ``(kind, round)`` of a run, in order (see the module docstring)."""
    stages = [("warmup", 0)] if config.warmup_epochs else []
    stages.append(("regen", 0))
    for r in range(config.rounds):
        phases = ("rec", "id") if config.alt_style == "rec_first" else ("id", "rec")
        for phase in phases if config.id_epochs else ("rec",):  # --id-epochs 0: no ID phase, so nothing to regenerate
            stages += [("rec", r), ("valid", r)] if phase == "rec" else [("id", r), ("regen", r + 1), ("valid", r)]
    return [*stages, ("test", config.rounds)]


RETIRED = {"prior_walks": 0}  # options no longer in TrainConfig, at the value that left them off: such checkpoints still resume


def _schedule(config: dict) -> dict:
    """The fields of a :class:`TrainConfig` that a resumed run must share (all but logging and checkpoint frequency)."""
    return {k: v for k, v in config.items() if k not in ("log_every", "checkpoint_every") and not (k in RETIRED and RETIRED[k] == v)}


def lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """Linear warm-up over the first ``warmup_ratio`` of a phase's steps, then linear decay to 0."""
    warm = max(1, int(total * warmup_ratio))
    return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))


class Distributed:
    """Process layout: one process by default, the ``accelerate launch`` group when there is one."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        self.device = device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over processes (one flat all-reduce)."""
        if not self.dist:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]) / self.world
        self.dist.all_reduce(flat)
        for p, g in zip(params, flat.split([g.numel() for g in grads]), strict=True):
            p.grad = g.view_as(p).clone()

    def gather(self, values: list) -> list:
        """Concatenate per-process lists in rank order (identity in one process)."""
        if not self.dist:
            return values
        parts = [None] * self.world
        self.dist.all_gather_object(parts, values)
        return [v for part in parts for v in part]

    def barrier(self) -> None:
        if self.dist:
            self.dist.barrier()


class ShardedIDGenerator(IDGenerator):
    """An :class:`~foundation_rec.idgen.IDGenerator` whose candidate generation is split over processes.

    Each process writes candidates for every ``world``-th text; the lists are gathered in text order,
    so every process runs the same (deterministic) unique assignment on the same candidates.
    """

    def __init__(self, backbone, config, dist: Distributed):
        super().__init__(backbone, config)
        self.dist = dist

    def candidates(self, texts: Sequence[str], **kwargs) -> list[list[str]]:
        rank, world = self.dist.rank, self.dist.world
        if world == 1:
            return super().candidates(texts, **kwargs)
        mine = super().candidates(list(texts[rank::world]), **kwargs)
        gathered = self.dist.gather([(rank + k * world, c) for k, c in enumerate(mine)])
        return [c for _, c in sorted(gathered, key=lambda pair: pair[0])]


class MetricsLog:
    """JSON-lines metrics log (and TensorBoard scalars when ``tensorboard`` is installed), written by rank 0."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                self.tb = None

    def truncate(self, step: int) -> None:
        """Drop records written after ``step`` (by a run that died after its last checkpoint)."""
        if self.enabled and self.path.is_file():
            lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if json.loads(line).get("step", 0) <= step]
            atomic.write_text(self.path, "".join(line + "\n" for line in lines))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    self.tb.add_scalar(f"{record.get('phase', 'run')}/{key}", value, record["step"])


@dataclass
class KeywordTargets:
    """The warm-up's examples: pool item indices and the token lists of their keyword IDs."""

    items: np.ndarray
    tokens: list[list[int]]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Phase:
    """One training stage's set-up (:meth:`Trainer.phase`): ``loss(examples, indices, templates) -> (loss, tokens)``."""

    module: torch.nn.Module
    loss: Callable
    examples: object
    epochs: int
    batch_size: int
    lr: float


@dataclass
class LogWindow:
    """Steps since the last ``metrics.jsonl`` record: summed loss, finite and skipped steps, samples, tokens, start time."""

    loss: float = 0.0
    steps: int = 0
    skipped: int = 0
    samples: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def reset(self) -> None:
        self.loss, self.steps, self.skipped, self.samples, self.tokens, self.start = 0.0, 0, 0, 0, 0, time.perf_counter()


class Trainer:
    """Runs :func:`plan` over a :class:`~foundation_rec.pool.Pool` with a :class:`~foundation_rec.bundle.ModelBundle`.

    The bundle's generator (an :class:`foundation_rec.idgen.IDGenerator`; its trainable module is
    ``generator.backbone.model``) writes the IDs with :func:`foundation_rec.idgen.build_table` (unique
    over the whole pool); the warm-up targets are :func:`foundation_rec.idgen.keyword_id`.
    ``run_config`` (JSON) goes into every checkpoint's ``foundation_rec.json`` (the arguments that
    rebuild the models); every checkpoint holds the bundle (:meth:`ModelBundle.write`).
    ``output_dir`` receives ``checkpoint/`` (latest), ``best/`` (best validation), ``metrics.jsonl``
    and ``results.json``.
    """

    def __init__(
        self,
        config: TrainConfig,
        pool: Pool,
        bundle: ModelBundle,
        output_dir: str | Path,
        *,
        run_config: dict,
        progress: bool = True,
    ):
        config.check()
        self.config = config
        self.pool = pool
        self.bundle = bundle
        self.rec = recommender = bundle.recommender
        generator = bundle.generator
        self.dist = Distributed(recommender.device)
        if config.precision == "bf16" and self.dist.device.type != "cuda":
            raise FoundationRecError("--precision bf16 needs a CUDA device; pass --precision fp32 (or auto) on the CPU")
        self.gen = ShardedIDGenerator(generator.backbone, generator.config, self.dist)
        self.gen_model = generator.backbone.model
        self.output_dir = Path(output_dir)
        self.run_config = run_config
        self.progress = progress
        self.stages = plan(config)
        self.log = MetricsLog(self.output_dir / "metrics.jsonl", self.dist.main)
        self._check_vocabulary()
        self.texts = pool.texts()
        if recommender.content is not None or recommender.scorer is not None:  # frozen MiniLM vectors of every pool item (cached)
            recommender.item_vectors, _ = item_vectors(self.texts, "pre-training pool", progress and self.dist.main)
        self.id_users = 0  # the ID phase's examples: all (0), or a seeded sample of this many
        self.prior_vectors = recommender.item_vectors  # what the content prior reads (finetune: moved by the scorer's catalog offsets)
        self.train_examples = pool.examples("train")
        self.valid_examples = pool.examples("valid", config.valid_users or None, config.seed)
        self.test_examples = pool.examples("test", config.test_users or None, config.seed)
        self.table = IDTable()
        self.id_strings: list[str] = []
        if config.rec_objective == "sequence" and recommender.seq2seq:
            raise FoundationRecError("--rec-objective sequence needs a decoder-only recommender; add --rec-preset causal-cpu (or a causal --backbone), or pass --rec-objective next")
        self.prompts = PromptBuilder.for_training(recommender.tokenizer, asdict(config))
        self.tries: list[Trie] = []
        self.user_text: list[str | None] = []
        # progress through the plan (what a checkpoint records)
        self.step = 0
        self.skipped: dict[str, int] = {}  # steps with a non-finite loss or gradient per phase kind (this process's run)
        self.tried: dict[str, int] = {}  # all steps per phase kind (this process's run)
        self.stage = 0
        self.epoch = 0
        self.batch = 0
        self.best: float | None = None
        self.gamma = defaults.CONTENT_PRIOR  # the content prior's weight in generation: the best model's, chosen at validation
        self.history: list[dict] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_optimizer: tuple[dict, dict] | None = None
        self.test_result: dict = {}
        torch.manual_seed(config.seed)  # dropout; a resumed run restores the saved generator state instead

    # ----------------------------------------------------------------------------- set-up

    def _check_vocabulary(self) -> None:
        rec_vocab, gen_vocab = self.rec.tokenizer.get_vocab(), self.gen.tokenizer.get_vocab()
        if rec_vocab != gen_vocab:
            raise FoundationRecError(VOCAB_ERROR)

    def set_ids(self, table: IDTable) -> None:
        """Adopt an ID table: token lists, prompt builder, per-corpus tries and (optionally) user IDs."""
        for corpus in self.pool.corpora:
            if table.item_ids.get(corpus.name) != corpus.items.data.column("item_id").to_pylist():
                raise FoundationRecError(f"the ID table does not cover catalog {corpus.name!r}; resume with the same --corpora, sample and --seed")
        self.table = table
        self.id_strings = [i for name in self.pool.names() for i in table.ids[name]]
        indexed = [self.rec.index_ids(table.ids[name], name) for name in self.pool.names()]
        self.prompts.set_ids([tokens for id_tokens, _ in indexed for tokens in id_tokens])
        self.tries = [trie for _, trie in indexed]
        if self.config.user_ids:
            offsets, values = self.pool.training_prefixes()
            self.user_text = [u or None for u in user_textual_ids(offsets, values, self.id_strings)]

    def _user(self, examples: PoolExamples, i: int) -> str | None:
        return self.user_text[examples.user(i)] if self.user_text else None

    # ----------------------------------------------------------------------------- batches

    def epoch_order(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's example order and per-example templates, drawn from seed, stage and epoch.

        With several processes the order wraps around to a multiple of their number, so that every
        process gets a non-empty slice of the last batch (as ``DistributedSampler`` does).
        """
        rng = np.random.default_rng([self.config.seed, self.stage, self.epoch])
        order = rng.permutation(n)
        templates = sample_templates(rng, n, len(self.prompts.templates))
        return np.resize(order, -(-n // self.dist.world) * self.dist.world), templates

    def rec_batch(self, examples: PoolExamples, indices: np.ndarray, templates: np.ndarray, all_positions: bool = False) -> Batch:
        prompts = [self.prompts.build(examples.history(i), int(t), self._user(examples, i)) for i, t in zip(indices, templates, strict=True)]
        targets = [self.prompts.id_tokens[examples.target(i)] for i in indices]
        spans = [list(zip(p.items, p.spans, strict=True)) for p in prompts]
        return self.rec.collate([p.tokens for p in prompts], targets, spans, all_positions)

    def rec_loss(self, examples: PoolExamples, indices, templates) -> tuple[torch.Tensor, int]:
        batch = self.rec_batch(examples, indices, templates, self.config.rec_objective == "sequence").to(self.dist.device)
        return self.rec.loss(batch), batch.num_tokens

    def soft_id_loss(self, examples: PoolExamples, indices, templates) -> tuple[torch.Tensor, int]:
        """Recommendation loss with every history item's ID replaced by the generator's soft embedding."""
        batch = self.rec_batch(examples, indices, templates).to(self.dist.device)
        items = sorted({item for row in batch.spans for item, _ in row})
        slot = {item: k for k, item in enumerate(items)}
        eos = [self.rec.eos_token_id]
        probs = self.gen.token_distributions([self.texts[i] for i in items], [self.prompts.id_tokens[i] + eos for i in items])
        table = self.rec.model.get_input_embeddings().weight.detach()
        vocab = min(table.shape[0], probs.shape[-1])  # shared tokenizer; models may pad their vocabularies differently
        soft = probs[..., :vocab].to(table.dtype) @ table[:vocab]  # [U, L, D]
        rows, positions, sources, offsets = [], [], [], []
        for b, row in enumerate(batch.spans):
            for item, (start, end) in row:
                rows += [b] * (end - start)
                positions += range(start, end)
                sources += [slot[item]] * (end - start)
                offsets += range(end - start)
        embeds = self.rec.input_embeddings(batch.input_ids).detach()
        device = embeds.device
        index = (torch.tensor(rows, device=device), torch.tensor(positions, device=device))
        embeds = embeds.index_put(index, soft[torch.tensor(sources, device=device), torch.tensor(offsets, device=device)])
        return self.rec.loss_from_embeds(embeds, batch), batch.num_tokens

    def warmup_loss(self, targets: KeywordTargets, indices, _templates) -> tuple[torch.Tensor, int]:
        """Teacher-forcing cross-entropy of the generator on the items' keyword IDs (EOS included)."""
        return keyword_loss(self.gen, [self.texts[targets.items[i]] for i in indices], [targets.tokens[i] for i in indices])

    def keyword_targets(self) -> KeywordTargets:
        """The warm-up's items (all, or a seeded sample of ``warmup_items``) and their keyword ID tokens."""
        items = np.arange(len(self.texts))
        if 0 < self.config.warmup_items < len(items):
            items = np.sort(np.random.default_rng([self.config.seed, 7]).choice(len(items), self.config.warmup_items, replace=False))
        return KeywordTargets(items, encode_ids(self.rec.tokenizer, [keyword_id(self.texts[i]) or "item" for i in items]))

    # ----------------------------------------------------------------------------- phases

    def phase(self, kind: str) -> Phase:
        """The trained module, loss, examples, epochs, batch size and learning rate of a training stage."""
        c = self.config
        if kind == "rec":
            examples = self.train_examples.last_per_user(self.pool.max_history) if c.rec_objective == "sequence" else self.train_examples
            return Phase(self.rec.modules, self.rec_loss, examples, c.rec_epochs, c.rec_batch_size, c.rec_lr)
        if kind == "id":
            examples = self.train_examples.last_per_user() if c.id_examples == "last" else self.train_examples
            if 0 < self.id_users < len(examples):  # a seeded sample (finetune's --id-users)
                keep = np.sort(np.random.default_rng([c.seed, 11]).choice(len(examples), self.id_users, replace=False))
                examples = PoolExamples(examples.splits, examples.offsets, examples.user_offsets, examples.corpus[keep], examples.index[keep])
            return Phase(self.gen_model, self.soft_id_loss, examples, c.id_epochs, c.id_batch_size, c.id_lr)
        return Phase(self.gen_model, self.warmup_loss, self.keyword_targets(), c.warmup_epochs, c.warmup_batch_size, c.warmup_lr)

    def train_phase(self, kind: str, round_: int) -> None:
        phase = self.phase(kind)
        frozen = self.gen_model if kind == "rec" else self.rec.modules
        params = [p for p in phase.module.parameters() if p.requires_grad]
        frozen_flags = [(p, p.requires_grad) for p in frozen.parameters()]
        for p, _ in frozen_flags:
            p.requires_grad_(False)
        frozen.train(False)
        phase.module.train()
        self.optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=self.config.weight_decay)
        if self._pending_optimizer is not None:
            checkpoint.load_optimizer_state(self.optimizer, "optimizer", *self._pending_optimizer)
            self._pending_optimizer = None
        per_epoch = math.ceil(len(phase.examples) / (phase.batch_size * self.dist.world))
        try:
            while self.epoch < phase.epochs:
                self._epoch(kind, round_, phase, params, per_epoch)
                if self._out_of_steps():
                    break
                self.epoch, self.batch = self.epoch + 1, 0
                if self.epoch < phase.epochs:
                    self.save_checkpoint()
        finally:
            for p, flag in frozen_flags:
                p.requires_grad_(flag)
            self.optimizer = None

    def _epoch(self, kind: str, round_: int, phase: Phase, params: list, per_epoch: int) -> None:
        order, templates = self.epoch_order(len(phase.examples))
        batch_size, total = phase.batch_size, max(1, phase.epochs * per_epoch)
        world, rank = self.dist.world, self.dist.rank
        bf16 = self.dist.device.type == "cuda" and self.config.precision != "fp32"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
        bar = tqdm(
            total=per_epoch,
            initial=self.batch,
            desc=f"{kind} r{round_} e{self.epoch}",
            unit="batch",
            disable=not (self.progress and self.dist.main),
            dynamic_ncols=True,
        )
        window = LogWindow()
        with bar:
            while self.batch < per_epoch and not self._out_of_steps():
                lo = self.batch * batch_size * world
                chunk = order[lo : lo + batch_size * world][rank::world]
                for g in self.optimizer.param_groups:
                    g["lr"] = phase.lr * lr_factor(self.epoch * per_epoch + self.batch, total, self.config.lr_warmup_ratio)
                with autocast:
                    loss, tokens = phase.loss(phase.examples, chunk, templates[chunk])
                loss.backward()
                self.dist.mean_grads(params)
                # the norm is computed either way (an infinite bound clips nothing) to catch non-finite gradients
                norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip or float("inf"))
                self.tried[kind] = self.tried.get(kind, 0) + 1
                value, norm_value = torch.stack([loss.detach().float(), norm.float()]).tolist()  # one device sync for both
                if math.isfinite(value) and math.isfinite(norm_value):
                    self.optimizer.step()
                    window.loss += value
                    window.steps += 1
                else:
                    self._skip_nonfinite(kind, window)
                self.optimizer.zero_grad(set_to_none=True)
                self.step, self.batch = self.step + 1, self.batch + 1
                window.samples += len(chunk) * world
                window.tokens += tokens * world
                bar.update(1)
                if window.steps + window.skipped >= self.config.log_every or self.batch == per_epoch:
                    self._log_window(kind, round_, window, bar)
                if self.batch % self.config.checkpoint_every == 0 and self.batch < per_epoch:
                    self.save_checkpoint()
        if window.steps or window.skipped:
            self._log_window(kind, round_, window, bar)

    def _skip_nonfinite(self, kind: str, window: LogWindow) -> None:
        """Drop a step whose loss or gradient is not finite; stop the run once such steps are no longer rare."""
        window.skipped += 1
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        if self.skipped[kind] > MAX_SKIPPED and self.skipped[kind] > 0.05 * self.tried[kind]:
            flag = {"warmup": "--warmup-lr", "rec": "--rec-lr", "id": "--id-lr"}.get(kind, "the learning rate")
            raise FoundationRecError(
                f"{self.skipped[kind]} of the {kind} phase's steps had a non-finite loss or gradient (skipped); "
                f"lower {flag} or pass --precision fp32"
            )

    def _log_window(self, kind: str, round_: int, window: LogWindow, bar) -> None:
        seconds = max(time.perf_counter() - window.start, 1e-9)
        record = {
            "step": self.step,
            "phase": kind,
            "round": round_,
            "epoch": self.epoch,
            "loss": window.loss / window.steps if window.steps else None,
            "skipped_nonfinite": window.skipped,
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples_per_s": window.samples / seconds,
            "tokens_per_s": window.tokens / seconds,
        }
        loss = "skipped" if record["loss"] is None else f"{record['loss']:.3f}"
        bar.set_postfix(loss=loss, sps=f"{record['samples_per_s']:.1f}", step=self.step)
        self.log.write(record)
        window.reset()

    def _out_of_steps(self) -> bool:
        return bool(self.config.max_steps) and self.step >= self.config.max_steps

    # ----------------------------------------------------------------------------- IDs and evaluation

    def regenerate(self) -> None:
        """Generate every item's ID (items sharded over processes; uniqueness resolved over the whole pool)."""
        self.set_ids(build_table(self.gen, self.pool.corpora, progress=self.progress and self.dist.main))
        fallbacks = sum(g.get("fallbacks", 0) for g in self.table.generation.values())
        self.log.write({"step": self.step, "phase": "regen", "unique_ids": len(set(self.id_strings)), "items": len(self.id_strings), "fallbacks": fallbacks})

    def evaluate(self, split: str, gamma: float | None = None) -> dict:
        """Recall/NDCG@5,10 per corpus (and pooled) on ``split``'s examples, through the evaluation harness
        (:func:`foundation_rec.evaluate.evaluate_examples`), users sharded over processes; generation with the
        content prior at ``gamma`` (None: the model's, :attr:`gamma`; 0: pure generation)."""
        gamma = (self.gamma if gamma is None else gamma) if self.rec.scorer is not None else 0.0
        examples = self.valid_examples if split == "valid" else self.test_examples
        results = {}
        for c, name in enumerate(self.pool.names()):
            everyone = np.flatnonzero(examples.corpus == c)
            if not len(everyone):
                continue
            mine, offset = everyone[self.dist.rank :: self.dist.world], int(self.pool.offsets[c])
            prior_vectors = None if self.prior_vectors is None else self.prior_vectors[offset : int(self.pool.offsets[c + 1])]
            view = CatalogRecommender(self.rec, self.prompts, self.tries[c], offset, num_beams=self.config.eval_beams, batch_size=self.config.eval_batch_size,
                                      content_prior=gamma, prior_vectors=prior_vectors)
            ex = Examples(split, [examples.history(i) - offset for i in mine], np.asarray([examples.target(i) - offset for i in mine], dtype=np.int64),
                          users_total=len(mine), users_excluded=0, sampled=False, users=[self._user(examples, i) for i in mine])
            # one harness batch: the view batches its prompts itself (eval_batch_size), as before
            metrics = evaluate_examples(ex, view, name, len(self.pool.corpora[c].items), batch_size=max(len(ex), 1), gather=self.dist.gather)[0]
            results[name] = {**metrics, "users": len(everyone), "catalog": len(self.pool.corpora[c].items)}
        if results:  # every metric is a mean over users: the pooled one is the user-weighted mean
            total = sum(r["users"] for r in results.values())
            keys = [k for k in next(iter(results.values())) if k not in ("users", "catalog")]
            results["pooled"] = {**{k: sum(r[k] * r["users"] for r in results.values()) / total for k in keys}, "users": total}
        return results

    # ----------------------------------------------------------------------------- checkpoints

    def state(self) -> dict:
        return {
            "stage": self.stage,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "best": self.best,
            "gamma": self.gamma,
            "history": self.history,
            "stages": self.stages,
            "train_config": asdict(self.config),
        }

    def save_checkpoint(self, folder: str = "checkpoint") -> None:
        """Write models, tokenizer, ID table and training state to ``output_dir/<folder>`` atomically (rank 0)."""
        if self.dist.main:
            with atomic.staged_dir(self.output_dir / folder) as tmp:
                config = {**self.run_config, "format_version": checkpoint.FORMAT_VERSION, "corpora": list(self.pool.names()), "step": self.step}
                if self.rec.scorer is not None:
                    config["content_prior"] = self.gamma  # generation's weight on the prior, chosen on pool validation
                atomic.write_json(tmp / checkpoint.CONFIG_NAME, config)
                self.bundle.table = self.table
                self.bundle.write(tmp)
                tensors, state = checkpoint.rng_tensors(), self.state()
                if self.optimizer is not None:
                    opt_tensors, state["optimizer"] = checkpoint.optimizer_state(self.optimizer, "optimizer")
                    tensors.update(opt_tensors)
                checkpoint.write_state(tmp, state, tensors)
        self.dist.barrier()

    def load_models(self, folder: Path) -> None:
        """Load both models' weights and the ID table of a checkpoint (``checkpoint/`` or ``best/``) in place."""
        checkpoint.read_config(folder)
        self.bundle.load_weights(folder)
        if self.bundle.table.ids:
            self.set_ids(self.bundle.table)

    def restore(self, folder: str | Path) -> None:
        """Continue from a checkpoint: weights, ID table, schedule position, optimizer moments, RNG."""
        folder = Path(folder)
        state, tensors = checkpoint.read_state(folder)
        if state["stages"] != [list(s) for s in self.stages] or _schedule(state["train_config"]) != _schedule(asdict(self.config)):
            raise FoundationRecError(f"{folder} was written with another schedule; resume with the same arguments as the run that wrote it")
        self.load_models(folder)
        self.stage, self.epoch, self.batch, self.step = state["stage"], state["epoch"], state["batch"], state["step"]
        self.best, self.history, self.gamma = state["best"], state["history"], state.get("gamma", defaults.CONTENT_PRIOR)
        if "optimizer" in state:
            self._pending_optimizer = ({k: v for k, v in tensors.items() if k.startswith("optimizer.")}, state["optimizer"])
        checkpoint.restore_rng(tensors)
        self.log.truncate(self.step)

    # ----------------------------------------------------------------------------- the run

    def run(self) -> dict:
        """Run (or continue) the plan; return ``{"valid": [...], "best_valid": ..., "test": {...}}`` (also in ``results.json``)."""
        while self.stage < len(self.stages):
            kind, round_ = self.stages[self.stage]
            if kind in ("warmup", "rec", "id"):
                if not self._out_of_steps():
                    self.train_phase(kind, round_)
            elif kind == "regen":
                self.regenerate()
            elif kind == "valid":
                self._validate(round_)
            else:
                self._test()
            self.stage, self.epoch, self.batch = self.stage + 1, 0, 0
            self.save_checkpoint()
        return {"valid": self.history, "best_valid": self.best, "test": self.test_result}

    def _validate(self, round_: int) -> None:
        """Validate generation with the content prior at every gamma of :data:`defaults.PRIOR_GAMMAS` (the model's
        weight on the prior is chosen here, on the pool's validation users, never on a target); the best gamma's
        score is the model's, and the best model so far becomes ``best/`` with its gamma (what ``zeroshot`` ships)."""
        grid = defaults.PRIOR_GAMMAS if self.rec.scorer is not None else (0.0,)
        by_gamma = {g: self.evaluate("valid", g) for g in grid}
        scores = {g: r.get("pooled", {}).get(SELECT_METRIC, 0.0) for g, r in by_gamma.items()}
        gamma = max(grid, key=lambda g: (scores[g], g))  # ties: the larger gamma
        result, score, extra = by_gamma[gamma], scores[gamma], {}
        if len(grid) > 1:
            extra = {"gamma": gamma, f"{SELECT_METRIC}_by_gamma": {f"{g:g}": v for g, v in scores.items()}}
        if self.config.valid_generation and self.rec.scorer is not None:
            extra |= {f"generation_{k}": v for k, v in self.evaluate("valid", 0.0).get("pooled", {}).items() if k != "users"}
        self.history.append({"round": round_, "step": self.step, "metrics": result, **extra})
        self.log.write({"step": self.step, "phase": "valid", "round": round_, **result.get("pooled", {}), **extra})
        if self.best is None or score > self.best:
            self.best, self.gamma = score, gamma
            self.save_checkpoint("best")

    def _test(self) -> None:
        """Evaluate the best model (by validation) once on the test split; write ``results.json``."""
        if (self.output_dir / "best").is_dir():
            self.load_models(self.output_dir / "best")
        self.test_result = self.evaluate("test")
        self.log.write({"step": self.step, "phase": "test", **self.test_result.get("pooled", {})})
        if self.dist.main:
            atomic.write_json(self.output_dir / "results.json", {"valid": self.history, "best_valid": self.best, "test": self.test_result})
