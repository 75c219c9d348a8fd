"""The trainable part of a model and the state that travels: peft LoRA adapters, or the full model.

With LoRA, every conv with groups == 1 and every Linear but the head gets a peft adapter (conv:
A r x C_in x k x k, B C_out x r x 1 x 1); depthwise convs stay frozen (``lora_target_names``).
What trains besides the adapters is the spec's ``lora_mode``, FLoCoRA's modes (``LORA_MODES``):

* ``lora``: the adapters only;
* ``lora-norm``: the adapters and the norm layers' affine parameters;
* ``lora-norm-head``: adapters on every conv, norms and the whole head ("mode 2", the default);
* ``full-stem``: as ``lora-norm-head``, but the first conv trains in full instead of an adapter.

Trained norms, head and stem are peft ``modules_to_save``, and travel. Norm layers are *always*
in ``modules_to_save``, so the adapter (and peft's saved files) holds their running statistics;
those statistics are measured on the global model in the evaluate phase rather than sent with
training messages. In modes without norms their affine parameters are frozen and stay off the
wire; in modes without the head it stays the frozen seeded head.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flora_app.ml.models import (
    NORM_TYPES,
    base_fingerprint,
    build_model,
    head_module_name,
    norm_module_names,
    stem_conv_name,
)
from flora_app.ml.names import LORA_MODES, NORMS

BASE_SPEC_FILE = "base_model.json"


@dataclass(frozen=True)
class _Placement:
    """What a ``lora_mode`` trains and exchanges besides the LoRA adapters."""

    norms: bool
    head: bool
    full_stem: bool


_PLACEMENTS = {
    "lora": _Placement(norms=False, head=False, full_stem=False),
    "lora-norm": _Placement(norms=True, head=False, full_stem=False),
    "lora-norm-head": _Placement(norms=True, head=True, full_stem=False),
    "full-stem": _Placement(norms=True, head=True, full_stem=True),
}

assert tuple(_PLACEMENTS) == LORA_MODES, "one placement per lora-mode choice"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the frozen base and its adapters, on any participant.

    ``norm`` and ``pretrained`` sit with the fields that describe the base, ``lora_mode`` with
    the adapter's; all three are keyword-only, so positional construction keeps its historical
    order (model, in_channels, num_classes, width, seed, use_lora, lora_r, lora_alpha).
    ``lora_mode`` only matters with ``use_lora``.
    """

    model: str
    in_channels: int
    num_classes: int
    width: int
    seed: int
    norm: str = field(default="batch", kw_only=True)
    pretrained: bool = field(default=False, kw_only=True)
    # Side of the square the input is resized to before the network (0: the model's own
    # default, e.g. 64 for EfficientNet-Lite0; only models with an input adapter take it).
    image_size: int = field(default=0, kw_only=True)
    use_lora: bool
    lora_r: int = 16
    lora_alpha: float = 256.0
    lora_mode: str = field(default="lora-norm-head", kw_only=True)
    # FFA-LoRA (Sun et al., 2024): A stays at its seeded init on every participant, only B
    # (and what the mode trains besides) trains and travels.
    lora_freeze_a: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        """Refuse unknown choices here, before any participant builds or caches a model."""
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}: expected one of {', '.join(NORMS)}")
        if self.lora_mode not in LORA_MODES:
            raise ValueError(
                f"unknown lora-mode {self.lora_mode!r}: expected one of {', '.join(LORA_MODES)}"
            )


class StateMismatchError(ValueError):
    """Received tensors do not fit the model: wrong names, shapes or non-finite values."""


@functools.lru_cache(maxsize=4)
def _cached_base(spec: ModelSpec) -> tuple[nn.Module, str]:
    base = build_model(
        spec.model,
        spec.in_channels,
        spec.num_classes,
        spec.width,
        spec.seed,
        norm=spec.norm,
        pretrained=spec.pretrained,
        image_size=spec.image_size,
    )
    return base, base_fingerprint(base)


def base_fingerprint_of(spec: ModelSpec) -> str:
    """Fingerprint of the frozen base the spec describes (cached per process)."""
    return _cached_base(spec)[1]


def base_parameter_count(spec: ModelSpec) -> int:
    """Parameters of the bare architecture (what FedAvg sends, what the papers divide by)."""
    return sum(p.numel() for p in _cached_base(spec)[0].parameters())


def lora_target_names(base: nn.Module, lora_mode: str = "lora-norm-head") -> list[str]:
    """The modules of ``base`` that get a LoRA adapter in ``lora_mode``.

    Every conv with groups == 1 and every Linear except the head (MobileNet's classifier has a
    hidden Linear); in ``full-stem`` the first conv trains in full instead.
    """
    skip = {head_module_name(base)}
    if _PLACEMENTS[lora_mode].full_stem:
        skip.add(stem_conv_name(base))
    # Depthwise and other grouped convs (groups > 1) get no LoRA, deliberately: a rank-r
    # factorisation of a (C, 1, k, k) depthwise kernel saves nothing (C*k*k parameters against
    # r*(k*k + C)), and peft's Conv2d LoRA does not reproduce the grouping (its A is a dense
    # C_in -> r conv, only B is grouped, and r must be a multiple of groups). Their kernels stay
    # frozen, part of the seeded base.
    return [
        name
        for name, module in base.named_modules()
        if name not in skip
        and (
            isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
        )
    ]


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

    placement = _PLACEMENTS[spec.lora_mode]
    stem = stem_conv_name(base)
    modules_to_save = norm_module_names(base)
    if placement.head:
        modules_to_save.append(head_module_name(base))
    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=0.0,
        target_modules=lora_target_names(base, spec.lora_mode),
        modules_to_save=modules_to_save,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed + 1)
        model = get_peft_model(base, config)
    if placement.full_stem:
        _train_in_full(base, stem, model.active_adapter)
    if not placement.norms:
        for module in model.modules():
            if isinstance(module, NORM_TYPES):
                module.requires_grad_(False)
    if spec.lora_freeze_a:
        for name, parameter in model.named_parameters():
            if _is_lora_a(name):
                parameter.requires_grad_(False)
    return model


def _is_lora_a(name: str) -> bool:
    return ".lora_A." in name or name.endswith(".lora_A")


def _is_lora_b(name: str) -> bool:
    return ".lora_B." in name or name.endswith(".lora_B")


def _rank_axis(name: str, shape: tuple[int, ...]) -> int | None:
    """The axis of an exchanged tensor that holds LoRA's components: peft keeps them along dim
    0 of A (``(r, ...)``) and dim 1 of B (``(out, r, ...)``); None for norms and the head."""
    axis = 0 if _is_lora_a(name) else 1 if _is_lora_b(name) else None
    return None if axis is None or len(shape) <= axis else axis


def rank_block(name: str, shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """The shape of the leading block of an exchanged tensor that the first ``rank`` LoRA
    components own: all of a tensor without components (norms, head: trained whole)."""
    axis = _rank_axis(name, shape)
    if axis is None:
        return tuple(shape)
    return tuple(min(rank, n) if i == axis else n for i, n in enumerate(shape))


def keep_rank(model: nn.Module, rank: int) -> None:
    """Zero every LoRA component from ``rank`` on (A's rows and B's columns), so the model
    trains a rank-``rank`` adapter: with both halves of a component zero, neither gets a
    gradient, and they stay zero through local SGD."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if _is_lora_a(name):
                parameter[rank:] = 0.0
            elif _is_lora_b(name):
                parameter[:, rank:] = 0.0


def _train_in_full(base: nn.Module, name: str, adapter: str) -> None:
    """Make one module of the (already peft-wrapped) base a ``modules_to_save`` entry by hand.

    Naming it in ``LoraConfig.modules_to_save`` would not do: peft matches those names by
    suffix, so ResNet's stem ``conv1`` would also catch every block's ``conv1`` and take their
    adapters away. peft finds its wrappers by type when it builds, saves and loads adapter
    state, so a hand-made one trains and travels like the configured ones.
    """
    from peft.utils import ModulesToSaveWrapper

    parent_name, _, attr = name.rpartition(".")
    parent = base.get_submodule(parent_name)
    wrapper = ModulesToSaveWrapper(getattr(parent, attr), adapter)
    wrapper.set_adapter(adapter, inference_mode=False)
    setattr(parent, attr, wrapper)


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

    Exactly the trainable tensors: LoRA A (unless ``lora_freeze_a``) and B, and the norm
    layers, head and stem when the mode trains them (all parameters for the full model).
    BatchNorm running statistics do not travel here: the server measures them on the global
    model in the evaluate phase (``flora_app.ml.batchnorm``); GroupNorm has none.
    """
    state = _full_state(model, spec)
    frozen_norm: set[str] = set()
    if spec.use_lora and not _PLACEMENTS[spec.lora_mode].norms:
        frozen_norm = {f"{n}.{p}" for n in _norm_prefixes(model) for p in ("weight", "bias")}
    frozen_a = spec.use_lora and spec.lora_freeze_a
    return OrderedDict(
        (name, tensor.detach().cpu().numpy().astype(np.float32, copy=True))
        for name, tensor in state.items()
        if not _is_statistic(name)
        and name not in frozen_norm
        and not (frozen_a and _is_lora_a(name))
    )


def running_statistics(model: nn.Module, spec: ModelSpec) -> OrderedDict[str, np.ndarray]:
    """BatchNorm running means and variances, named as in the model's (peft) state."""
    return OrderedDict(
        (name, tensor.detach().cpu().numpy().astype(np.float32, copy=True))
        for name, tensor in _full_state(model, spec).items()
        if name.endswith((".running_mean", ".running_var"))
    )


def _norm_prefixes(model: nn.Module) -> set[str]:
    """Where the norm layers' tensors sit in peft's adapter state.

    peft names a ``modules_to_save`` tensor after its wrapper (``base_model.model.bn1.weight``).
    Found from the modules rather than from running statistics, so GroupNorm counts too.
    """
    from peft.utils import ModulesToSaveWrapper

    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, ModulesToSaveWrapper)
        and isinstance(module.original_module, NORM_TYPES)
    }


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


# ``base_model.json`` written before ``lora_mode`` held two flags: (train_norm, train_head).
_LEGACY_MODES = {
    (False, False): "lora",
    (True, False): "lora-norm",
    (True, True): "lora-norm-head",
}


def _spec_from_meta(meta: dict) -> ModelSpec:
    """The spec ``base_model.json`` records, older files' norm/head flags read as a mode."""
    flags = (meta.pop("train_norm", None), meta.pop("train_head", None))
    if flags != (None, None):
        key = (flags[0] is not False, flags[1] is not False)
        if key not in _LEGACY_MODES:
            raise StateMismatchError(
                "saved spec trains the head but not the norms, which no lora-mode does"
            )
        meta["lora_mode"] = _LEGACY_MODES[key]
    return ModelSpec(**meta)


def load_saved_model(directory: Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a model saved by ``save_adapter``: the seeded base plus the saved adapter.

    The LoRA model is rebuilt as ``build_trainable`` builds it and the saved tensors must match
    its adapter state exactly: the stem that ``full-stem`` trains is wrapped by hand, not named
    in peft's config (see ``_train_in_full``), so only this rebuild restores the same module
    structure. (peft's ``PeftModel.from_pretrained`` still loads such a file for inference: the
    trained stem weight lands in the plain stem conv.)
    """
    meta = json.loads((Path(directory) / BASE_SPEC_FILE).read_text())
    fingerprint = meta.pop("base_fingerprint")
    spec = _spec_from_meta(meta)
    base, local_fingerprint = _cached_base(spec)
    if local_fingerprint != fingerprint:
        raise StateMismatchError(
            f"rebuilt base fingerprint {local_fingerprint} differs from the saved {fingerprint}"
        )
    if spec.use_lora:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        model = build_trainable(spec)
        saved = load_peft_weights(str(directory), device="cpu")
        _check_tensors(
            {k: v.numpy() for k, v in saved.items()},
            {k: v.detach().cpu().numpy() for k, v in _full_state(model, spec).items()},
            "saved adapter tensors",
            partial=False,
        )
        set_peft_model_state_dict(model, saved)
    else:
        from safetensors.torch import load_file

        model = copy.deepcopy(base)
        model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
    return model, spec
