"""Checkpoint directories: ``save_pretrained``-style, safetensors and JSON only, written atomically.

Layout of a checkpoint directory::

    foundation_rec.json        format version, run arguments, backbone, corpora, step, metrics
    recommender/               a saved backbone: config.json, model.safetensors (+ adapter/ with LoRA), tokenizer
    generator/                 the same for the ID generator (both load with ``load_backbone(BackboneConfig(name_or_path=...))``)
    ids/                       the ID table (textual ID of every item of every corpus)
    training_state/state.json  position in the schedule, step, best validation score, metric history
    training_state/tensors.safetensors   optimizer moments and RNG states

The whole directory is written through :func:`foundation_rec.atomic.staged_dir`, so a process killed
while saving leaves the previous checkpoint intact. Nothing is ever read with pickle or
``torch.load``: weights and states are safetensors, everything else JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch

from .errors import FoundationRecError

FORMAT_VERSION = 1
CONFIG_NAME = "foundation_rec.json"
STATE_DIR = "training_state"


def read_config(path: str | Path) -> dict:
    """The checkpoint's ``foundation_rec.json``; a one-line error when ``path`` is not a checkpoint."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FoundationRecError(f"{path} is not a foundation_rec checkpoint (no {CONFIG_NAME}); pass a directory written by pretrain")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise FoundationRecError(f"{file} is not valid JSON ({str(err).splitlines()[0]}); the checkpoint is damaged, use another one or retrain") from None
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        config = config if isinstance(config, dict) else {}
        raise FoundationRecError(
            f"{path} has checkpoint format {config.get('format_version')}, this code reads {FORMAT_VERSION}; use a matching foundation_rec version"
        )
    return config


def load_weights(model, folder: Path) -> None:
    """Load the weights of a saved backbone (:meth:`foundation_rec.backbones.Backbone.save` or ``save_pretrained``)
    into an already-built model of the same architecture: only the adapter for a PEFT model, else every weight.

    Keys missing from the file must be tied to a loaded tensor (e.g. T5's ``lm_head`` / ``embed_tokens``).
    """
    adapter = next((f for f in (folder / "adapter" / "adapter_model.safetensors", folder / "adapter_model.safetensors") if f.is_file()), None)
    if adapter is not None and hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, safetensors.torch.load_file(str(adapter), device=str(next(model.parameters()).device)))
        return
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise FoundationRecError(f"{folder} holds no model.safetensors or adapter; the checkpoint is incomplete, use another one")
    state = {}
    for file in files:
        state.update(safetensors.torch.load_file(str(file)))
    mismatch = f"{folder}: the saved weights do not fit the model; resume with the same --preset/--backbone"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:
        raise FoundationRecError(mismatch) from None
    params = dict(model.state_dict())
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    if unexpected or [k for k in missing if params[k].data_ptr() not in loaded_ptrs]:
        raise FoundationRecError(mismatch)


def load_module(folder: Path, weights: str, info: str, build) -> tuple[torch.nn.Module, dict] | None:
    """A small module saved as ``folder/weights`` (safetensors) + ``folder/info`` (JSON): ``build(info)``
    makes it, then its weights are loaded; None when ``info`` is absent; one line naming the file when damaged."""
    if not (folder / info).is_file():
        return None
    try:
        record = json.loads((folder / info).read_text(encoding="utf-8"))
        module = build(record)
        module.load_state_dict(safetensors.torch.load_file(str(folder / weights)))
    except (OSError, ValueError, KeyError, RuntimeError, safetensors.SafetensorError) as err:
        raise FoundationRecError(f"{folder / weights} is unreadable ({str(err).splitlines()[0][:120]}); restore it from a complete checkpoint") from None
    return module, record


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON (everything else)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        head, index, key = name.split(".", 2)
        if head == prefix:
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_tensors() -> dict[str, torch.Tensor]:
    """torch's CPU and CUDA generator states (numpy randomness is re-derived from the seed, never stored)."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def write_state(folder: Path, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    """``training_state/state.json`` and ``training_state/tensors.safetensors`` inside a staged checkpoint."""
    (folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(folder / STATE_DIR / "tensors.safetensors"))
    (folder / STATE_DIR / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")


def read_state(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Inverse of :func:`write_state`."""
    state_file = folder / STATE_DIR / "state.json"
    if not state_file.is_file():
        raise FoundationRecError(f"{folder} has no training state; resume from a checkpoint directory written during training")
    state = json.loads(state_file.read_text(encoding="utf-8"))
    return state, safetensors.torch.load_file(str(folder / STATE_DIR / "tensors.safetensors"))
