"""Patch encoders, timm-shaped: one registry of architecture builders, and each encoder a tagged config row.

- :data:`_REGISTRY` holds the builders (``timm_vit``, ``resnet_trunc``, ``hf_clip``, ``hf_vit``, ``hf_dinov2``,
  ``conch_v1_5``): ``builder(row, depth) -> (module, weights_module)``.
- a **preset** (:mod:`mambamil.features.presets`, one data row each, e.g. ``uni_v2``; its tag is
  ``<builder>.<name>`` as timm's ``arch.tag``) names its builder and pins the architecture arguments,
  preprocessing, output recipe, dimension, weight release, tiling, licence and the sources of these facts. Its
  settings cannot be overridden (that would no longer be the authors' embedding). :func:`list_encoders` filters
  the rows by name or tag.
- ``timm:<model>``: timm's own registry: any timm model with its classifier removed (pooled pre-logits),
  ``encoder_kwargs`` to ``timm.create_model``; preprocessing and pooling from its timm config unless set
  (``features.mean``, ``std``, ``input_size``, ``interpolation``, ``pooling``), with a warning naming the
  normalisation it falls back to.

Weights: :mod:`mambamil.features.weights` (``random`` seeded, ``hub`` when asked, or a checkpoint loaded strictly).
Add an encoder with a row (:func:`register_preset`), and a builder first if its architecture is new::

    @register_builder("my_arch")
    def _build(row: Preset, depth: int | None) -> tuple[nn.Module, nn.Module]: ...
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mambamil.errors import MambamilError
from mambamil.features import HUB, RANDOM
from mambamil.features.presets import (  # noqa: F401  (IMAGENET_*: re-exported)
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    PRESETS,
    SILU,
    SWIGLU_PACKED,
    WEIGHT_FILES,
    Preset,
    matches,
)
from mambamil.features.weights import (  # noqa: F401  (re-exported: the weights half of the encoder API)
    _hub_error,
    file_sha256,
    hub_snapshot,
    load_encoder_weights,
    load_strict,
    matching_presets,
    release_to_model_keys,
    resolve_weights_file,
    state_dict_sha256,
    weights_kind,
)
from mambamil.h5layout import FeatureAttrs

log = logging.getLogger(__name__)

#: Seed of ``random`` weights, so random features are reproducible.
RANDOM_SEED = 0

RANDOM_WARNING = "RANDOM WEIGHTS: these features carry no pretrained knowledge (demo/tests only)"

#: ``timm:`` poolings (``features.pooling``): ``pooled`` is timm's head-less forward.
TIMM_POOLINGS = ("pooled", "cls", "cls+mean", "mean")


@dataclass(frozen=True)
class EncoderSpec:
    """What a model expects as input: (h, w) pixels, per-channel mean/std on [0, 1] RGB, the resize
    interpolation (``area``: cv2 INTER_AREA weights; ``bilinear``/``bicubic``: antialiased, as PIL/torchvision
    resize) and the crop (``crop_pct`` < 1: resize to ``input/crop_pct`` and keep the centre)."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "area"
    crop_pct: float = 1.0
    output: str = "pooled"


@dataclass
class BuiltModel:
    """What a builder returns: the module producing embeddings, its input spec, checkpoint key prefixes to ignore
    (parameters the encoder drops on purpose, e.g. ``layer4.`` and ``fc.`` of a truncated ResNet), and the module
    whose state dict is the weight file's key layout (the same module unless an output recipe wraps it)."""

    module: nn.Module
    spec: EncoderSpec
    ignore_prefixes: tuple[str, ...] = ()
    weights_module: nn.Module | None = None
    ignore_suffixes: tuple[str, ...] = ()
    strip_prefix: str = ""
    key_renames: tuple[tuple[str, str], ...] = ()

    @property
    def target(self) -> nn.Module:
        return self.weights_module if self.weights_module is not None else self.module


Builder = Callable[..., BuiltModel]
ArchBuilder = Callable[[Preset, int | None], tuple[nn.Module, nn.Module]]
#: The one registry: architecture builders by name (a preset's ``family``).
_REGISTRY: dict[str, ArchBuilder] = {}


def register_builder(name: str) -> Callable[[ArchBuilder], ArchBuilder]:
    """Register ``builder(row, depth) -> (module, weights_module)`` under ``name``."""

    def deco(builder: ArchBuilder) -> ArchBuilder:
        if name in _REGISTRY:
            raise ValueError(f"encoder builder {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return deco


def register_preset(row: Preset) -> Preset:
    """Add an encoder as a config row of a registered builder."""
    if row.family not in _REGISTRY:
        raise ValueError(f"preset {row.name!r}: no builder {row.family!r} (register_builder first)")
    if row.name in PRESETS:
        raise ValueError(f"encoder {row.name!r} is already registered")
    PRESETS[row.name] = row
    return row


def list_encoders(pattern: str = "*") -> list[str]:
    """Encoder names whose name or ``builder.name`` tag matches a shell-style ``pattern`` (as timm's
    ``list_models``: ``timm_vit.*`` lists the timm ViT presets); ``timm:<model>`` takes any of timm's."""
    return [n for n, p in PRESETS.items() if matches(p, pattern)]


def available_encoders() -> list[str]:
    return [*list_encoders(), "timm:<model name>"]


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
    preset: Preset | None = None

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
            preset=self.preset.name if self.preset else "",
            output=self.spec.output,
            interpolation=self.spec.interpolation,
            crop_pct=float(self.spec.crop_pct),
            encoder_mpp=float(self.preset.mpp) if self.preset and self.preset.mpp else 0.0,
        )


# -- output recipes over token sequences ----------------------------------------------------------------------
class TokenRecipe(nn.Module):
    """One vector per image from a backbone's final tokens (B, T, D): ``cls`` (token 0), ``mean`` (mean of the
    patch tokens, after ``prefix_tokens`` class/register tokens) or ``cls+mean`` (both, concatenated)."""

    def __init__(self, backbone: nn.Module, tokens: Callable[[torch.Tensor], torch.Tensor], output: str, prefix: int):
        super().__init__()
        if output not in ("cls", "mean", "cls+mean"):
            raise ValueError(f"no token recipe {output!r}")
        self.backbone = backbone
        self._tokens = tokens
        self.output, self.prefix = output, prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return token_recipe(self._tokens(x), self.output, self.prefix)


def token_recipe(tokens: torch.Tensor, output: str, prefix: int) -> torch.Tensor:
    """The embedding of final tokens (B, T, D) by recipe (see :class:`TokenRecipe`)."""
    if output == "cls":
        return tokens[:, 0]
    patches = tokens[:, prefix:].mean(dim=1)
    return patches if output == "mean" else torch.cat([tokens[:, 0], patches], dim=-1)


# -- builders of preset families ------------------------------------------------------------------------------
def _timm_kwargs(arch_kwargs: Any, depth: int | None) -> dict[str, Any]:
    import timm.layers

    symbols = {SWIGLU_PACKED: timm.layers.SwiGLUPacked, SILU: nn.SiLU}
    kwargs = {k: symbols.get(v, v) if isinstance(v, str) else v for k, v in arch_kwargs.items()}
    kwargs["num_classes"] = 0
    if depth is not None:
        kwargs["depth"] = depth
    if torch.get_default_device().type == "meta":
        kwargs["weight_init"] = "skip"  # shapes only: no initialisation to run
    return kwargs


@register_builder("timm_vit")
def _build_timm_vit(p: Preset, depth: int | None) -> tuple[nn.Module, nn.Module]:
    import timm

    vit = timm.create_model(p.arch, pretrained=False, **_timm_kwargs(p.arch_kwargs, depth))
    return TokenRecipe(vit, vit.forward_features, p.output, p.prefix_tokens), vit


@register_builder("resnet_trunc")
def _build_resnet_trunc(p: Preset, depth: int | None) -> tuple[nn.Module, nn.Module]:
    model = _timm_create(f"{p.arch}.tv_in1k", False, num_classes=0)
    model.layer4 = nn.Identity()  # forward_features stops after layer3; the head average-pools 1024 channels
    model.num_features = 1024
    return model, model


def _hf_config(cls_name: str, p: Preset, depth: int | None) -> Any:
    import transformers

    config = getattr(transformers, cls_name)(**dict(p.arch_kwargs))
    if depth is not None:
        config.num_hidden_layers = depth
    config._attn_implementation = "sdpa"  # fused scaled-dot-product attention
    return config


@register_builder("hf_clip")
def _build_hf_clip(p: Preset, depth: int | None) -> tuple[nn.Module, nn.Module]:
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(_hf_config("CLIPVisionConfig", p, depth))
    return _HFOutput(model, "image_embeds"), model


@register_builder("hf_vit")
def _build_hf_vit(p: Preset, depth: int | None) -> tuple[nn.Module, nn.Module]:
    from transformers import ViTModel

    model = ViTModel(_hf_config("ViTConfig", p, depth), add_pooling_layer=False)
    return TokenRecipe(model, _HFOutput(model, "last_hidden_state"), p.output, p.prefix_tokens), model


@register_builder("hf_dinov2")
def _build_hf_dinov2(p: Preset, depth: int | None) -> tuple[nn.Module, nn.Module]:
    from transformers import Dinov2Model

    model = Dinov2Model(_hf_config("Dinov2Config", p, depth))
    return TokenRecipe(model, _HFOutput(model, "last_hidden_state"), p.output, p.prefix_tokens), model


class _HFOutput(nn.Module):
    """A transformers model called on ``pixel_values``, returning one field of its output."""

    def __init__(self, model: nn.Module, field: str) -> None:
        super().__init__()
        self.model, self.field = model, field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(pixel_values=x), self.field)


class AttentionalPooler(nn.Module):
    """CoCa/CONCH contrastive attentional pooling: learned queries attend over the tokens (multi-head)."""

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads = n_head
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h = x.shape[0], self.heads
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class ConchVisionTower(nn.Module):
    """CONCH v1.5's vision encoder: a ViT-L/16 trunk (LayerScale) whose 224-px position embedding is interpolated
    to the input grid the DINO way (bicubic, scale factor with the +0.1 offset), then the contrastive attentional
    pooler and a LayerNorm (768-d). Key layout of ``pytorch_model_vision.bin``."""

    def __init__(self, trunk: nn.Module, pooler_dim: int, pooler_heads: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = AttentionalPooler(pooler_dim, trunk.embed_dim, pooler_heads, 1)
        self.ln_contrast = nn.LayerNorm(pooler_dim)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        grid = t.patch_embed(x)  # (B, h, w, D) with dynamic_img_size
        b, gh, gw, d = grid.shape
        pos = self.trunk.pos_embed
        n = pos.shape[1] - 1
        side = int(math.sqrt(n))
        patch_pos = pos[:, 1:]
        if (gh, gw) != (side, side):
            patch_pos = F.interpolate(
                patch_pos.reshape(1, side, side, d).permute(0, 3, 1, 2),
                scale_factor=((gh + 0.1) / side, (gw + 0.1) / side),
                mode="bicubic",
            )
            patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, d)
        cls = (t.cls_token + pos[:, :1]).expand(b, -1, -1)
        seq = torch.cat([cls, grid.reshape(b, gh * gw, d) + patch_pos], dim=1)
        return t.norm(t.blocks(t.norm_pre(seq)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_contrast(self.attn_pool_contrast(self.tokens(x))[:, 0])


@register_builder("conch_v1_5")
def _build_conch_v1_5(p: Preset, depth: int | None) -> tuple[nn.Module, nn.Module]:
    import timm

    kw = dict(p.arch_kwargs)
    pooler_dim, pooler_heads = kw.pop("pooler_dim"), kw.pop("pooler_heads")
    trunk = timm.create_model(p.arch, pretrained=False, dynamic_img_size=True, **_timm_kwargs(kw, depth))
    tower = ConchVisionTower(trunk, pooler_dim, pooler_heads)
    return tower, tower


def build_preset(p: Preset, depth: int | None = None) -> BuiltModel:
    """A preset's model with fresh (random) weights; ``depth`` builds a reduced-depth copy (tests)."""
    module, target = _REGISTRY[p.family](p, depth)
    spec = EncoderSpec((p.input_size, p.input_size), p.mean, p.std, p.interpolation, p.crop_pct, p.output)
    return BuiltModel(module, spec, p.ignore_prefixes, target, p.ignore_suffixes, p.strip_prefix, p.key_renames)


def _preset_builder(p: Preset) -> Builder:
    def build(pretrained: bool, depth: int | None = None, **kwargs: Any) -> BuiltModel:
        if kwargs:
            raise MambamilError(
                f"encoder '{p.name}' is a preset: its architecture is fixed, encoder_kwargs {sorted(kwargs)} are not "
                "allowed (use timm:<model> for a custom recipe)"
            )
        if pretrained:
            raise MambamilError(f"encoder '{p.name}': a preset's hub weights load through create_encoder")
        return build_preset(p, depth)

    return build


# -- timm: ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimmOverrides:
    """Explicit ``features`` settings that override a ``timm:`` model's own config (None / empty: the config's)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: int | None = None
    interpolation: str | None = None
    pooling: str | None = None

    @classmethod
    def of(cls, settings: Any) -> TimmOverrides:
        """From a settings object with ``mean``, ``std``, ``input_size``, ``interpolation``, ``pooling``."""
        get = lambda k: getattr(settings, k, None) or None  # noqa: E731  ([] and "" mean unset)
        mean, std = get("mean"), get("std")
        for key, value in (("mean", mean), ("std", std)):
            if value is not None and len(value) != 3:
                raise MambamilError(f"features.{key} needs 3 values (R, G, B), got {list(value)}")
        return cls(
            tuple(float(v) for v in mean) if mean else None,
            tuple(float(v) for v in std) if std else None,
            get("input_size"),
            get("interpolation"),
            get("pooling"),
        )

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.mean, self.std, self.input_size, self.interpolation, self.pooling))


def _timm_builder(model_name: str, overrides: TimmOverrides) -> Builder:
    def build(pretrained: bool, **kwargs: Any) -> BuiltModel:
        import timm.data

        kwargs = {"num_classes": 0, **kwargs}
        model = _timm_create(model_name, pretrained, **kwargs)
        cfg = timm.data.resolve_data_config({}, model=model)
        _, h, w = cfg["input_size"]
        size = (overrides.input_size,) * 2 if overrides.input_size else (int(h), int(w))
        mean = overrides.mean or _triple(cfg["mean"])
        std = overrides.std or _triple(cfg["std"])
        if overrides.mean is None or overrides.std is None:
            tag = model.pretrained_cfg.get("tag") or ""
            log.warning(
                "encoder 'timm:%s' normalises with its timm config's mean %s / std %s (pretrained config %s); set "
                "features.mean and features.std if its weights were trained with another normalisation",
                model_name,
                _rounded(mean),
                _rounded(std),
                f"{model_name}.{tag}" if tag else model_name,
            )
        interpolation = overrides.interpolation or "area"
        pooling = overrides.pooling or "pooled"
        classifier = model.pretrained_cfg.get("classifier") or ()
        classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        ignore = tuple(f"{c}." for c in classifiers) if kwargs["num_classes"] == 0 else ()
        spec = EncoderSpec(size, mean, std, interpolation, 1.0, pooling)
        if pooling == "pooled":
            return BuiltModel(model, spec, ignore_prefixes=ignore)
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        return BuiltModel(TokenRecipe(model, model.forward_features, pooling, prefix), spec, ignore, model)

    return build


def _rounded(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


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


def _triple(values: Any) -> tuple[float, float, float]:
    v = tuple(float(x) for x in values)
    return (v[0], v[0], v[0]) if len(v) == 1 else (v[0], v[1], v[2])


def get_builder(name: str, overrides: TimmOverrides | None = None) -> Builder:
    """The builder of a preset, a registered encoder, or a timm builder for ``timm:<model>``.

    ``overrides`` (explicit mean/std/input size/interpolation/pooling) apply to ``timm:`` models only; a preset
    refuses them."""
    overrides = overrides or TimmOverrides()
    if name.startswith("timm:"):
        model_name = name.split(":", 1)[1]
        if not model_name:
            raise MambamilError("encoder 'timm:' needs a model name, e.g. timm:resnet18")
        if overrides.interpolation and overrides.interpolation not in INTERPOLATIONS:
            raise MambamilError(f"features.interpolation must be one of {', '.join(INTERPOLATIONS)}")
        if overrides.pooling and overrides.pooling not in TIMM_POOLINGS:
            raise MambamilError(f"features.pooling must be one of {', '.join(TIMM_POOLINGS)}")
        return _timm_builder(model_name, overrides)
    if overrides.any:
        set_keys = [k for k in ("mean", "std", "input_size", "interpolation", "pooling") if getattr(overrides, k)]
        raise MambamilError(
            f"encoder '{name}' fixes its own preprocessing and output; features.{', '.join(set_keys)} apply to "
            "timm:<model> encoders only"
        )
    if name not in PRESETS:
        raise MambamilError(f"unknown encoder {name!r}; choose from {', '.join(available_encoders())}")
    return _preset_builder(PRESETS[name])


# -- creation ---------------------------------------------------------------------------------------------
def create_encoder(
    name: str,
    weights: str | None,
    checkpoint_sha256: str | None = None,
    overrides: TimmOverrides | None = None,
    **kwargs: Any,
) -> Encoder:
    """Build encoder ``name`` with ``weights`` (``random`` | ``hub`` | checkpoint file or snapshot folder), in eval
    mode on CPU. ``checkpoint_sha256`` skips re-hashing a checkpoint the caller has already hashed; ``overrides``
    are explicit preprocessing/pooling settings of a ``timm:`` model."""
    kind = weights_kind(weights)
    builder = get_builder(name, overrides)
    preset = PRESETS.get(name)
    path, file_hash = "", ""
    if kind == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            built = builder(False, **kwargs)
        log.warning("%s: %s", name, RANDOM_WARNING)
    elif kind == HUB and preset is None:
        built = builder(True, **kwargs)
    else:
        source = hub_snapshot(preset) if kind == HUB else weights  # type: ignore[arg-type]
        file = resolve_weights_file(source, preset)  # type: ignore[arg-type]
        state = load_encoder_weights(file, preset)
        path = str(file.resolve())
        file_hash = checkpoint_sha256 or file_sha256(file)
        built = builder(False, **kwargs)
        load_strict(built, state, file, name)
        del state
    model = built.module.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dim = _output_dim(model, built.spec, name)
    if preset is not None and dim != preset.dim:
        raise MambamilError(f"encoder '{name}' gives {dim}-d features, its preset says {preset.dim}")
    return Encoder(
        name=name,
        model=model,
        spec=built.spec,
        dim=dim,
        weights=kind,
        weights_path=path,
        weights_sha256=file_hash,
        state_dict_sha256=state_dict_sha256(built.target),
        kwargs=dict(kwargs),
        preset=preset,
    )


def fast_model(encoder: Encoder, device: torch.device, compile_model: bool = False) -> nn.Module:
    """The encoder's model on ``device`` the fast way: channels-last (convolutions), fused SDPA attention (timm
    and transformers use it by default; set here for transformers), and ``torch.compile`` when asked, on CUDA."""
    model = encoder.model.to(device=device, memory_format=torch.channels_last)
    if compile_model and device.type == "cuda":
        model = torch.compile(model, dynamic=False)
    return model


def _output_dim(model: nn.Module, spec: EncoderSpec, name: str) -> int:
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, *spec.input_size))
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MambamilError(f"encoder '{name}' returns {shape}, expected (batch, dim)")
    return int(out.shape[1])


def check_tile_resolution(encoder: Encoder, target_mpp: float, patch_size: int, slide_id: str = "") -> str | None:
    """A warning (logged and returned) when the tile stage's grid differs from the preset's: its µm/px by more than
    10 %, or, for a preset that states its tiling (e.g. CONCH v1.5: 512 px at 0.5 µm/px resized to 448), another
    patch size (another field of view); None when it fits or the encoder has no trained resolution."""
    p = encoder.preset
    if p is None or p.mpp is None or not target_mpp:
        return None
    where = f"{slide_id + ': ' if slide_id else ''}patches of {patch_size} px at {target_mpp:g} µm/px"
    if p.tiling is not None:
        px, mpp = p.tiling
        if patch_size == px and abs(target_mpp - mpp) <= 0.1 * mpp:
            return None
        fov, want = patch_size * target_mpp, px * mpp
        msg = (
            f"{where} ({fov:g} µm, {fov / p.input_size:.3g} µm/px seen) but encoder '{p.name}' was trained on "
            f"{px}-px tiles at {mpp:g} µm/px resized to {p.input_size} px ({want:g} µm, {p.seen_mpp:.3g} µm/px "
            f"seen); set tiling.patch_size to {px} and tiling.target_mpp to {mpp:g}"
        )
    elif abs(target_mpp - p.mpp) <= 0.1 * p.mpp:
        return None
    else:
        msg = (
            f"{where} but encoder '{p.name}' was trained at {p.mpp:g} µm/px ({p.input_size} px inputs); set "
            f"tiling.target_mpp to {p.mpp:g}"
        )
    log.warning(msg)
    return msg
