"""Patch encoders: a registry of image → vector models and how their weights are obtained.

Names:

- ``resnet50_trunc``: ResNet-50 truncated after ``layer3`` + global average pooling → 1024-d, ImageNet
  mean/std, 224 px. The CLAM / MambaMIL recipe (CLAM's ``resnet50_baseline``); ``hub`` weights are timm's
  ``resnet50.tv_in1k`` (the torchvision ImageNet weights CLAM uses). Parameter names are torchvision's, so a
  torchvision ResNet-50 checkpoint loads directly (its ``layer4``/``fc`` are dropped by the truncation).
- ``timm:<model>``: any timm model with its classifier removed (``num_classes=0``: pooled pre-logits), with
  the model's own pretrained config for input size and mean/std. ``encoder_kwargs`` go to
  ``timm.create_model`` (UNI ViT-L/16: ``timm:vit_large_patch16_224`` with
  ``{init_values: 1e-5, dynamic_img_size: true}`` and its ``pytorch_model.bin``).

Weights: ``random`` (seeded, for the demo and tests; recorded in every output), ``hub`` (download; only when
asked), or a path to a local checkpoint (``.pth``/``.pt``/``.bin``/``.safetensors``), loaded strictly: missing,
unexpected or mis-shaped parameters are an error. Nothing is ever silently random.

Register more with::

    @register_encoder("my_encoder")
    def _build(pretrained: bool, **kwargs) -> BuiltModel: ...
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mambamil.errors import InputFileError, MambamilError
from mambamil.features import HUB, RANDOM
from mambamil.h5layout import FeatureAttrs

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Seed of ``random`` weights, so random features are reproducible.
RANDOM_SEED = 0

RANDOM_WARNING = "RANDOM WEIGHTS: these features carry no pretrained knowledge (demo/tests only)"


@dataclass(frozen=True)
class EncoderSpec:
    """What a model expects as input: (h, w) pixels, per-channel mean/std on [0, 1] RGB.

    Patches are resized to ``input_size`` whole (no centre crop: a crop would drop tissue at the border)."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class BuiltModel:
    """What a registered builder returns: the module, its input spec, and checkpoint key prefixes to ignore
    (parameters the encoder drops on purpose, e.g. ``layer4.`` and ``fc.`` of a truncated ResNet)."""

    module: nn.Module
    spec: EncoderSpec
    ignore_prefixes: tuple[str, ...] = ()


Builder = Callable[..., BuiltModel]
_REGISTRY: dict[str, Builder] = {}


def register_encoder(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder(pretrained: bool, **kwargs) -> BuiltModel`` under ``name``."""

    def deco(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return deco


def available_encoders() -> list[str]:
    return [*sorted(_REGISTRY), "timm:<model name>"]


@dataclass
class Encoder:
    """A ready-to-run encoder in eval mode with its provenance."""

    name: str
    model: nn.Module
    spec: EncoderSpec
    dim: int
    weights: str  # "random" | "hub" | "checkpoint"
    weights_path: str
    weights_sha256: str
    state_dict_sha256: str
    kwargs: dict[str, Any]

    @property
    def random(self) -> bool:
        return self.weights == RANDOM

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB at ``spec.input_size`` → normalised float (B, 3, H, W), channels-last."""
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.spec.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def attrs(self) -> FeatureAttrs:
        """Provenance attributes for the feature file (the encoder's part)."""
        return FeatureAttrs(
            encoder=self.name,
            encoder_kwargs=json.dumps(self.kwargs, sort_keys=True),
            feature_dim=self.dim,
            weights=self.weights,
            weights_path=self.weights_path,
            weights_sha256=self.weights_sha256,
            state_dict_sha256=self.state_dict_sha256,
            random_weights=self.random,
            warning=RANDOM_WARNING if self.random else "",
            input_size=tuple(self.spec.input_size),
            mean=tuple(self.spec.mean),
            std=tuple(self.spec.std),
        )


# -- registered encoders ----------------------------------------------------------------------------------
@register_encoder("resnet50_trunc")
def _resnet50_trunc(pretrained: bool, **kwargs: Any) -> BuiltModel:
    """CLAM's ``resnet50_baseline``: conv1 … layer3, adaptive average pool → 1024-d."""
    model = _timm_create("resnet50.tv_in1k", pretrained, num_classes=0, **kwargs)
    model.layer4 = nn.Identity()  # forward_features stops after layer3; the head average-pools 1024 channels
    model.num_features = 1024
    spec = EncoderSpec((224, 224), IMAGENET_MEAN, IMAGENET_STD)
    return BuiltModel(model, spec, ignore_prefixes=("layer4.", "fc."))


def _timm_builder(model_name: str) -> Builder:
    def build(pretrained: bool, **kwargs: Any) -> BuiltModel:
        import timm.data

        kwargs = {"num_classes": 0, **kwargs}
        model = _timm_create(model_name, pretrained, **kwargs)
        cfg = timm.data.resolve_data_config({}, model=model)
        _, h, w = cfg["input_size"]
        spec = EncoderSpec((int(h), int(w)), _triple(cfg["mean"]), _triple(cfg["std"]))
        classifier = model.pretrained_cfg.get("classifier") or ()
        classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        ignore = tuple(f"{c}." for c in classifiers) if kwargs["num_classes"] == 0 else ()
        return BuiltModel(model, spec, ignore_prefixes=ignore)

    return build


def _timm_create(model_name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise MambamilError(f"encoder 'timm:{model_name}': timm has no such model (timm.list_models())") from exc
        if pretrained:
            raise _hub_error(model_name, exc) from exc
        raise MambamilError(f"encoder 'timm:{model_name}': {type(exc).__name__}: {exc}") from exc
    except (OSError, ValueError, ImportError) as exc:
        if pretrained:
            raise _hub_error(model_name, exc) from exc
        raise MambamilError(f"encoder 'timm:{model_name}': {type(exc).__name__}: {exc}") from exc
    except TypeError as exc:
        raise MambamilError(f"encoder 'timm:{model_name}': bad encoder_kwargs ({exc})") from exc


def _hub_error(model_name: str, exc: BaseException) -> MambamilError:
    first = (str(exc).strip().splitlines() or [""])[0]
    return MambamilError(
        f"encoder '{model_name}': could not get hub weights ({type(exc).__name__}: {first}); offline machines need "
        "weights=<path to a local checkpoint>"
    )


def _triple(values: Any) -> tuple[float, float, float]:
    v = tuple(float(x) for x in values)
    return (v[0], v[0], v[0]) if len(v) == 1 else (v[0], v[1], v[2])


def get_builder(name: str) -> Builder:
    """The builder registered under ``name``, or a timm builder for ``timm:<model>``."""
    if name.startswith("timm:"):
        model_name = name.split(":", 1)[1]
        if not model_name:
            raise MambamilError("encoder 'timm:' needs a model name, e.g. timm:resnet18")
        return _timm_builder(model_name)
    if name not in _REGISTRY:
        raise MambamilError(f"unknown encoder {name!r}; choose from {', '.join(available_encoders())}")
    return _REGISTRY[name]


# -- weights ----------------------------------------------------------------------------------------------
def weights_kind(weights: str | None) -> str:
    """``random`` | ``hub`` | ``checkpoint``; no weights at all is an error, never a silent random model."""
    if weights is None or str(weights).strip() == "":
        raise MambamilError(
            "no encoder weights given: set weights to a local checkpoint path, 'hub' (downloads; online machines "
            "only) or 'random' (demo/tests; features without pretrained knowledge)"
        )
    return weights if weights in (RANDOM, HUB) else "checkpoint"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over parameter names and bytes: identifies the weights actually in use."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_encoder_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """An encoder's state dict from a weights file (unwraps ``state_dict``/``model`` and DDP ``module.`` prefixes)."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "checkpoint not found")
    if path.is_dir():
        raise InputFileError(path, "checkpoint is a directory, not a file")
    if path.stat().st_size == 0:
        raise InputFileError(path, "checkpoint is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise InputFileError(path, f"not a loadable checkpoint ({type(exc).__name__}: {first})") from exc
    for key in ("state_dict", "model", "model_state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputFileError(path, "checkpoint holds no state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_strict(built: BuiltModel, state: dict[str, torch.Tensor], path: str | Path, name: str) -> None:
    """Load ``state`` into ``built.module``: every parameter must be present and shaped right, and every
    checkpoint key must be used, except those under ``built.ignore_prefixes``."""
    own = built.module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.startswith(built.ignore_prefixes)]
    shapes = [
        f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:2])})")
        raise InputFileError(path, f"checkpoint does not match encoder '{name}': {'; '.join(parts)}")
    built.module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


# -- creation ---------------------------------------------------------------------------------------------
def create_encoder(name: str, weights: str | None, checkpoint_sha256: str | None = None, **kwargs: Any) -> Encoder:
    """Build encoder ``name`` with ``weights`` (``random`` | ``hub`` | checkpoint path), in eval mode on CPU.

    ``checkpoint_sha256`` skips re-hashing a checkpoint the caller has already hashed.
    """
    kind = weights_kind(weights)
    builder = get_builder(name)
    path, file_hash = "", ""
    if kind == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            built = builder(False, **kwargs)
        log.warning("%s: %s", name, RANDOM_WARNING)
    elif kind == HUB:
        built = builder(True, **kwargs)
    else:
        state = load_encoder_weights(weights)  # type: ignore[arg-type]
        path = str(Path(weights).resolve())  # type: ignore[arg-type]
        file_hash = checkpoint_sha256 or file_sha256(path)
        built = builder(False, **kwargs)
        load_strict(built, state, weights, name)  # type: ignore[arg-type]
        del state
    model = built.module.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dim = _output_dim(model, built.spec, name)
    return Encoder(
        name=name,
        model=model,
        spec=built.spec,
        dim=dim,
        weights=kind,
        weights_path=path,
        weights_sha256=file_hash,
        state_dict_sha256=state_dict_sha256(model),
        kwargs=dict(kwargs),
    )


def _output_dim(model: nn.Module, spec: EncoderSpec, name: str) -> int:
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, *spec.input_size))
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MambamilError(f"encoder '{name}' returns {shape}, expected (batch, dim)")
    return int(out.shape[1])
