"""Encoder weights: where they come from (``random`` | ``hub`` | a checkpoint file or hub snapshot folder), their
hashes, and the strict loader that names the encoder, the file, the first mismatching keys and the preset the
weights fit."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mambamil.errors import InputFileError, MambamilError, fault_from
from mambamil.features import HUB, RANDOM
from mambamil.features.presets import PRESETS, WEIGHT_FILES, Preset

if TYPE_CHECKING:
    from mambamil.features.encoders import BuiltModel


def _hub_error(model_name: str, exc: BaseException) -> MambamilError:
    first = (str(exc).strip().splitlines() or [""])[0]
    return MambamilError(
        f"encoder '{model_name}': could not get hub weights ({type(exc).__name__}: {first}); offline machines need "
        "weights=<path to a local checkpoint>"
    )


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


def resolve_weights_file(path: str | Path, preset: Preset | None = None) -> Path:
    """The weight file of ``path``: the file itself, or in a folder (a downloaded hub snapshot) the preset's
    release file, else the first of :data:`~mambamil.features.presets.WEIGHT_FILES` present."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "checkpoint not found")
    if not path.is_dir():
        return path
    names = (*(preset.files if preset else ()), *WEIGHT_FILES)
    for name in dict.fromkeys(names):
        if (path / name).is_file():
            return path / name
    raise InputFileError(path, f"folder holds no weight file (looked for {', '.join(dict.fromkeys(names))})")


def load_encoder_weights(path: str | Path, preset: Preset | None = None) -> dict[str, torch.Tensor]:
    """An encoder's state dict from a weights file or snapshot folder (unwraps ``state_dict``/``model`` and DDP
    ``module.`` prefixes)."""
    path = resolve_weights_file(path, preset)
    who = f"encoder '{preset.name}': " if preset else ""
    if path.stat().st_size == 0:
        raise InputFileError(path, f"{who}checkpoint is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if (fault := fault_from(exc, path)) is not None:  # EIO, ESTALE, memory...: the moment, not the file
            raise fault from exc
        first = (str(exc).strip().splitlines() or [""])[0]
        raise InputFileError(
            path, f"{who}not a loadable checkpoint, truncated or corrupt? ({type(exc).__name__}: {first})"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputFileError(path, f"{who}checkpoint holds no state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_strict(built: BuiltModel, state: dict[str, torch.Tensor], path: str | Path, name: str) -> None:
    """Load ``state`` into ``built.target``: every parameter must be present and shaped right, and every
    checkpoint key must be used, except those under ``built.ignore_prefixes`` (or ending in ``ignore_suffixes``).
    A mismatch is one line naming the encoder, the file, the first mismatching keys and the preset the weights
    fit, if any."""
    own = built.target.state_dict()
    state = release_to_model_keys(state, own, built.strip_prefix, built.key_renames)
    skip = lambda k: k.startswith(built.ignore_prefixes) or k.endswith(built.ignore_suffixes or ("\0",))  # noqa: E731
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked") and not skip(k)]
    unexpected = [k for k in state if k not in own and not skip(k)]
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
        fits = [p for p in matching_presets(state) if p != name]
        hint = f"; these look like '{fits[0]}' weights" if fits else ""
        file = resolve_weights_file(path) if Path(path).is_dir() else path
        raise InputFileError(file, f"checkpoint does not match encoder '{name}': {'; '.join(parts)}{hint}")
    built.target.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def release_to_model_keys(
    state: dict[str, Any], own: Any, strip_prefix: str = "", renames: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any]:
    """A release's state dict under the model's key names: ``strip_prefix`` removed when every key has it, and
    the ``renames`` applied when the model (its state dict ``own``) no longer uses the release's names."""
    if strip_prefix and all(k.startswith(strip_prefix) for k in state):
        state = {k[len(strip_prefix) :]: v for k, v in state.items()}
    rules = [(re.compile(a), b) for a, b in renames]
    if rules and not any(rx.search(k) for k in own for rx, _ in rules[:1]):
        renamed = {}
        for k, v in state.items():
            for rx, repl in rules:
                k = rx.sub(repl, k)
            renamed[k] = v
        state = renamed
    return state


def matching_presets(state: dict[str, torch.Tensor]) -> list[str]:
    """Presets whose full-size architecture (built on the meta device) the state dict fits exactly; only presets
    whose recorded release shapes (:attr:`Preset.release_keys`) fit are built."""
    out = []
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for p in PRESETS.values():
        recorded = release_to_model_keys(dict(p.release_keys), shapes, p.strip_prefix, p.key_renames)
        probe = release_to_model_keys(shapes, shapes, p.strip_prefix, p.key_renames)
        if any(probe.get(k) != tuple(s) for k, s in recorded.items()):
            continue  # the few recorded release shapes already differ: no need to build it
        try:
            from mambamil.features.encoders import build_preset

            with torch.device("meta"):
                built = build_preset(p)
        except Exception:  # an optional dependency missing: that preset cannot be the answer here
            continue
        sd = built.target.state_dict()
        own = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
        theirs = {
            k: s
            for k, s in release_to_model_keys(shapes, sd, p.strip_prefix, p.key_renames).items()
            if not k.startswith(p.ignore_prefixes)
            and not (p.ignore_suffixes and k.endswith(p.ignore_suffixes))
            and not k.endswith("num_batches_tracked")
        }
        if own == theirs:
            out.append(p.name)
    return out


def hub_snapshot(p: Preset) -> Path:
    """Download (or find in the local cache) a preset's release files through ``huggingface_hub``; the token
    comes from the environment (``HF_TOKEN``) or ``huggingface-cli login``. Never called at import or in tests."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError as exc:
        raise MambamilError(
            f"encoder '{p.name}': weights=hub needs huggingface_hub (pip install huggingface_hub)"
        ) from exc
    try:
        return Path(snapshot_download(p.hub_id, allow_patterns=list(p.files)))
    except GatedRepoError as exc:
        raise MambamilError(
            f"encoder '{p.name}': https://huggingface.co/{p.hub_id} is gated ({p.licence}): accept its terms on the "
            "hub with your account, then set HF_TOKEN (or run 'huggingface-cli login'); or download it and set "
            "weights to the folder"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise MambamilError(
            f"encoder '{p.name}': hub repository {p.hub_id} not found or not visible to your token"
        ) from exc
    except Exception as exc:
        raise _hub_error(p.name, exc) from exc
