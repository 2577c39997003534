"""Saving and loading training state safely: atomic writes, no pickled code on load.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists and dicts,
so it loads with ``torch.load(weights_only=True)``: opening a checkpoint from someone else cannot
execute code. Every write goes to a temporary file in the same folder and is moved into place
with ``os.replace``, so an interruption leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

#: identifies our files; a checkpoint without it is foreign
FORMAT = "backpropamine-gym/checkpoint/v1"


class DictConfig:
    """Dataclass mixin: ``to_dict`` for config.json, ``from_dict`` that refuses unknown keys
    (a run folder written by another version or another trainer) instead of ignoring them."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        unknown = set(d) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        return cls(**d)


class CheckpointError(ValueError):
    """A checkpoint or run folder that cannot be used, with a message for the user (a bad input)."""


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Write a file atomically: ``write(fileobj)`` fills a temporary file that replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically save ``payload`` (tensors, numbers, strings, lists, dicts only)."""
    data = {"format": FORMAT, **payload}
    atomic_write(path, lambda f: torch.save(data, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without executing pickled code.

    Raises:
        CheckpointError: missing, corrupted, foreign or unsafe file, with the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad bytes; all mean "unusable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupted, truncated, or not a "
            f"weights-only torch file): {first}"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a backpropamine-gym checkpoint (expected format {FORMAT!r})"
        )
    return data
