"""The trainable part of a model and the state that travels: peft LoRA adapters, or the full model.

With LoRA, every Conv2d gets a peft adapter (A: r x C_in x k x k, B: C_out x r x 1 x 1) and the
norm layers and the head are peft ``modules_to_save`` when they train (FLoCoRA's "mode 2").
Norm layers are *always* in ``modules_to_save``, so the adapter (and peft's saved files) holds
their running statistics; those statistics are measured on the global model in the evaluate
phase rather than sent with training messages. When ``lora-train-norm`` is off the norms'
affine parameters are frozen and stay off the wire.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flora_app.ml.models import (
    base_fingerprint,
    build_model,
    conv_module_names,
    head_module_name,
    norm_module_names,
)

BASE_SPEC_FILE = "base_model.json"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the frozen base and its adapters, on any participant."""

    model: str
    in_channels: int
    num_classes: int
    width: int
    seed: int
    use_lora: bool
    lora_r: int = 16
    lora_alpha: float = 256.0
    train_norm: bool = True
    train_head: bool = True


class StateMismatchError(ValueError):
    """Received tensors do not fit the model: wrong names, shapes or non-finite values."""


@functools.lru_cache(maxsize=4)
def _cached_base(spec: ModelSpec) -> tuple[nn.Module, str]:
    base = build_model(spec.model, spec.in_channels, spec.num_classes, spec.width, spec.seed)
    return base, base_fingerprint(base)


def base_fingerprint_of(spec: ModelSpec) -> str:
    """Fingerprint of the frozen base the spec describes (cached per process)."""
    return _cached_base(spec)[1]


def base_parameter_count(spec: ModelSpec) -> int:
    """Parameters of the bare architecture (what FedAvg sends, what the papers divide by)."""
    return sum(p.numel() for p in _cached_base(spec)[0].parameters())


def build_trainable(spec: ModelSpec) -> nn.Module:
    """A fresh model ready to train: the seeded base, wrapped with peft LoRA when asked.

    The base is built once per process and copied, so each round's client model costs a copy,
    not a re-initialisation. LoRA's own init (A kaiming-uniform, B zero) is seeded too, so the
    server's initial global adapters are reproducible.
    """
    base = copy.deepcopy(_cached_base(spec)[0])
    if not spec.use_lora:
        return base
    from peft import LoraConfig, get_peft_model  # heavy import (transformers); only when used

    modules_to_save = list(norm_module_names(base))
    if spec.train_head:
        modules_to_save.append(head_module_name(base))
    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=0.0,
        target_modules=conv_module_names(base),
        modules_to_save=modules_to_save,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed + 1)
        model = get_peft_model(base, config)
    if not spec.train_norm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.requires_grad_(False)
                module.bias.requires_grad_(False)
    return model


def _full_state(model: nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """peft's adapter state (A, B, modules_to_save with buffers), or the whole state_dict."""
    if not spec.use_lora:
        return model.state_dict()
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def _is_statistic(name: str) -> bool:
    return name.endswith((".running_mean", ".running_var", ".num_batches_tracked"))


def exchanged_state(model: nn.Module, spec: ModelSpec) -> OrderedDict[str, np.ndarray]:
    """The tensors that travel in training messages, in a fixed order, as float32 arrays.

    Exactly the trainable tensors: LoRA A and B, and the norm layers and head when they train
    (all parameters for the full model). BatchNorm running statistics do not travel here: the
    server measures them on the global model in the evaluate phase (``flora_app.ml.batchnorm``).
    """
    state = _full_state(model, spec)
    frozen_norm: set[str] = set()
    if spec.use_lora and not spec.train_norm:
        frozen_norm = {f"{n}.{p}" for n in _norm_prefixes(state) for p in ("weight", "bias")}
    return OrderedDict(
        (name, tensor.detach().cpu().numpy().astype(np.float32, copy=True))
        for name, tensor in state.items()
        if not _is_statistic(name) and name not in frozen_norm
    )


def running_statistics(model: nn.Module, spec: ModelSpec) -> OrderedDict[str, np.ndarray]:
    """BatchNorm running means and variances, named as in the model's (peft) state."""
    return OrderedDict(
        (name, tensor.detach().cpu().numpy().astype(np.float32, copy=True))
        for name, tensor in _full_state(model, spec).items()
        if name.endswith((".running_mean", ".running_var"))
    )


def _norm_prefixes(state: dict[str, torch.Tensor]) -> set[str]:
    return {k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")}


def _check_tensors(
    arrays: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str, partial: bool
) -> None:
    missing = [] if partial else [k for k in expected if k not in arrays]
    unexpected = [k for k in arrays if k not in expected]
    if missing or unexpected:
        raise StateMismatchError(
            f"{what} do not match the model: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    for name, got in arrays.items():
        ref = expected[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise StateMismatchError(
                f"tensor {name!r} has shape {tuple(got.shape)}, model expects {tuple(ref.shape)}"
            )
        if not np.all(np.isfinite(got)):
            raise StateMismatchError(f"tensor {name!r} contains NaN or Inf")


def _load(model: nn.Module, spec: ModelSpec, arrays: dict[str, np.ndarray]) -> None:
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
    if spec.use_lora:
        from peft import set_peft_model_state_dict

        # peft wants every key of its own state; the ones not given keep their values.
        full = _full_state(model, spec)
        full.update(tensors)
        set_peft_model_state_dict(model, full)
    else:
        model.load_state_dict(tensors, strict=False)


def load_running_statistics(
    model: nn.Module, spec: ModelSpec, stats: dict[str, np.ndarray]
) -> None:
    """Install BatchNorm statistics (any subset of ``running_statistics``), checked."""
    _check_tensors(stats, running_statistics(model, spec), "BatchNorm statistics", partial=True)
    if any(k.endswith(".running_var") and np.any(v < 0) for k, v in stats.items()):
        raise StateMismatchError("a BatchNorm running variance is negative")
    _load(model, spec, stats)


def load_exchanged_state(model: nn.Module, spec: ModelSpec, arrays: dict[str, np.ndarray]) -> None:
    """Load received tensors into the model, refusing anything that does not fit exactly.

    Names and shapes must equal what ``exchanged_state`` produces for this spec and every value
    must be finite: a silent partial load would train or evaluate a model nobody sent.
    """
    _check_tensors(arrays, exchanged_state(model, spec), "adapter tensors", partial=False)
    _load(model, spec, arrays)


def save_adapter(model: nn.Module, spec: ModelSpec, directory: Path) -> None:
    """Write the final model where a user can load it back with peft.

    LoRA: peft's ``save_pretrained`` (``adapter_config.json``, ``adapter_model.safetensors``).
    Full model: one safetensors file. Either way ``base_model.json`` records how to rebuild the
    frozen base (``load_saved_model`` does it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if spec.use_lora:
        model.save_pretrained(str(directory))
    else:
        from safetensors.torch import save_file

        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(directory / "model.safetensors"),
        )
    meta = {**asdict(spec), "base_fingerprint": base_fingerprint_of(spec)}
    (directory / BASE_SPEC_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_saved_model(directory: Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a model saved by ``save_adapter``: the seeded base plus the saved adapter."""
    meta = json.loads((Path(directory) / BASE_SPEC_FILE).read_text())
    fingerprint = meta.pop("base_fingerprint")
    spec = ModelSpec(**meta)
    base, local_fingerprint = _cached_base(spec)
    if local_fingerprint != fingerprint:
        raise StateMismatchError(
            f"rebuilt base fingerprint {local_fingerprint} differs from the saved {fingerprint}"
        )
    if spec.use_lora:
        from peft import PeftModel

        model = PeftModel.from_pretrained(copy.deepcopy(base), str(directory))
    else:
        from safetensors.torch import load_file

        model = copy.deepcopy(base)
        model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
    return model, spec
