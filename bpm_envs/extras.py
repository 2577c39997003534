"""Optional parts of the install and the message that names the extra providing each.

``pip install backpropamine-gym`` runs the main job (plastic A2C on the bpm/ tasks, the language
models); the rest comes with extras: ``peers`` (Stable-Baselines3, sb3-contrib), ``tensorboard``,
``render`` (pygame-ce, Pillow, matplotlib), ``all``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: top-level module -> (distribution, extra)
EXTRAS: dict[str, tuple[str, str]] = {
    "stable_baselines3": ("stable-baselines3", "peers"),
    "sb3_contrib": ("sb3-contrib", "peers"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "pygame": ("pygame-ce", "render"),
    "PIL": ("pillow", "render"),
    "matplotlib": ("matplotlib", "render"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def extra_message(module: str, purpose: str) -> str:
    dist, extra = EXTRAS[module.split(".")[0]]
    return (
        f"{purpose} needs {dist}, which is not installed; it is part of the '{extra}' extra: "
        f"pip install 'backpropamine-gym[{extra}]'"
    )


def as_missing_extra(exc: ImportError, purpose: str) -> MissingExtraError | None:
    """The :class:`MissingExtraError` for ``exc`` if it is about an optional dependency."""
    root = (getattr(exc, "name", None) or "").split(".")[0]
    return MissingExtraError(extra_message(root, purpose)) if root in EXTRAS else None


def require(module: str, purpose: str) -> ModuleType:
    """``import module``, or a :class:`MissingExtraError` saying which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = as_missing_extra(exc, purpose)
        if missing is None:
            raise
        raise missing from None
