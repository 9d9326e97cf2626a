"""Model registry and factory (timm-style): each family registers its entry functions beside its code.

>>> @register_model
... def abmil(**kw): return ABMIL(**kw)
>>> create_model("abmil", in_dim=1024, n_classes=2)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from mambamil.models.common import MILModel

__all__ = ["create_model", "list_models", "register_model"]

Entry = Callable[..., MILModel]

_REGISTRY: dict[str, Entry] = {}


@overload
def register_model(fn: Entry) -> Entry: ...
@overload
def register_model(fn: None = None, *, name: str) -> Callable[[Entry], Entry]: ...


def register_model(fn: Entry | None = None, *, name: str | None = None) -> Entry | Callable[[Entry], Entry]:
    """Decorator: register a model entry function under ``name`` (default: the function's name).

    ``@register_model`` or ``@register_model(name="max")`` (for names that would shadow a builtin).
    """

    def add(f: Entry) -> Entry:
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = f
        return f

    return add(fn) if fn is not None else add


def list_models() -> list[str]:
    """Registered model names."""
    return sorted(_REGISTRY)


def create_model(name: str, in_dim: int, n_classes: int, task: str = "classification", **kwargs: Any) -> MILModel:
    """Build a registered model; unknown names or keyword arguments raise ValueError."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    try:
        return _REGISTRY[name](in_dim=in_dim, n_classes=n_classes, task=task, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for model {name!r}: {e}") from None
