"""Saving and loading training state safely: atomic writes, no pickled code on load.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists and dicts,
so it loads with ``torch.load(weights_only=True)``: opening a checkpoint from someone else cannot
execute code. Every write goes to a temporary file in the same folder and is moved into place
with ``os.replace``, so an interruption leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import tempfile
import types
import typing
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

#: identifies our files; a checkpoint without it is foreign
FORMAT = "backpropamine-gym/checkpoint/v1"


class DictConfig:
    """Dataclass mixin: ``to_dict`` for config.json, ``from_dict`` that refuses unknown keys
    (a run folder written by another version or another trainer) instead of ignoring them, and
    values of the wrong type (``hidden_size: "two hundred"``), naming the field and the value."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Any) -> Any:
        check_config_dict(cls, d)
        return cls(**d)


def _type_name(tp: Any) -> str:
    """How a field type reads in a message: ``int | None`` -> 'an integer or null'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return "a list" + (
            f" of {_type_name(inner[0])}s".replace("an ", "").replace("a ", "")
            if inner and inner[0] is not Any
            else ""
        )
    if origin is dict or tp is dict:
        return "a JSON object"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _fits(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits a field type (ints count as floats; bools never as numbers)."""
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if origin in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return (
            isinstance(value, (list, tuple)) and all(_fits(v, inner[0]) for v in value)
            if inner
            else isinstance(value, (list, tuple))
        )
    return True  # a type this checker does not know: left to the class itself


def _json(value: Any) -> str:
    """A value as it reads in config.json (``null``, ``"0.001"``), for messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def check_config_dict(cls: type, d: Any) -> None:
    """Check that ``d`` is a dict of ``cls``'s dataclass fields with values of the declared types.

    Raises:
        ValueError: ``d`` is not a dict, has unknown keys, or a value of the wrong type; the
            message names the class, the field and the value.
    """
    name = cls.__name__
    if not isinstance(d, dict):
        raise ValueError(f"{name} must be a JSON object of settings, got {_json(d)}")
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown {name} keys: {sorted(unknown)}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for key, value in d.items():
        tp = hints.get(key, Any)
        if not _fits(value, tp):
            raise ValueError(f"{name} field {key!r} must be {_type_name(tp)}, got {_json(value)}")


class StopOnSignals:
    """Ctrl-C (SIGINT) or SIGTERM (what ``kill`` and job schedulers send) asks the loop to stop
    after the current update, which then saves a checkpoint; a second signal aborts at once."""

    SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class OutputError(ValueError):
    """An output path that cannot be written (a file in the way, read-only, no permission)."""


def _probe(folder: Path, what: str, target: Path) -> None:
    """Create ``folder`` if needed and write then delete a scratch file in it."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(f"cannot write {what} {target}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=folder, prefix=".bpm-write-test.")
        os.close(fd)
        os.unlink(scratch)
    except OSError as exc:
        blocker = f" ({exc.filename})" if exc.filename and Path(exc.filename) != target else ""
        raise OutputError(f"cannot write {what} {target}: {exc.strerror or exc}{blocker}") from None


def writable_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Check, before any work, that ``path`` is (or can be made) a folder the user may write in.

    The folder is created if missing. Raises :class:`OutputError` naming ``what`` (the flag),
    the path and the reason: a regular file in the way, a read-only filesystem, no permission.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write {what} {out}: it is a file, not a folder")
    _probe(out, what, out)
    return out


def writable_file(path: str | os.PathLike[str], what: str) -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder is created if
    missing; the file itself is not). Raises :class:`OutputError` naming ``what`` and the reason."""
    out = Path(path)
    if out.is_dir():
        raise OutputError(f"cannot write {what} {out}: it is a folder, not a file")
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputError(f"cannot write {what} {out}: the file is not writable")
    _probe(out.parent, what, out)
    return out


def not_a_folder(path: str | os.PathLike[str]) -> str:
    """Why ``path`` is not a folder, in words: "is a file, not a folder" or "does not exist"."""
    return "is a file, not a folder" if Path(path).exists() else "does not exist"


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as the process's umask leaves it (what ``open()`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


class CheckpointError(ValueError):
    """A checkpoint or run folder that cannot be used, with a message for the user (a bad input)."""


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Write a file atomically: ``write(fileobj)`` fills a temporary file that replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode())  # mkstemp's 0600 would hide shared results from the group
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


_ZIP_MAGIC = b"PK\x03\x04"


def load_failure(path: str | os.PathLike, exc: BaseException) -> str:
    """What is wrong with a file that ``torch.load(weights_only=True)`` refused, in plain words.

    PyTorch's own message advises re-running with ``weights_only=False``: that would execute
    whatever code the file holds, so it is never passed on to the user.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"it cannot be read ({err.strerror})"
    if not head:
        return "the file is empty (truncated)"
    if head != _ZIP_MAGIC:
        return "it is not a checkpoint (not a torch save file)"
    if not zipfile.is_zipfile(path):
        return "the file is truncated (the archive has no end)"
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
        return (
            "it contains objects other than tensors, numbers, strings, lists and dicts, which the "
            "safe loader refuses (a file from another program, or tampered with); it was not loaded"
        )
    return "the archive is corrupted (its records cannot be read)"


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    kind: str | None = None,
    legacy_formats: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without executing pickled code.

    Args:
        kind: if given, the payload's ``kind`` must be this (``rl``, ``sb3``, ``lm``; see
            :mod:`bpm_agents.runs`).
        legacy_formats: older ``format`` strings also accepted (files of earlier versions, which
            carry no ``kind``).
    Raises:
        CheckpointError: missing, corrupted, foreign or unsafe file, with the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():
            # a raw pickle makes torch warn about its protocol before failing; our error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad bytes; all mean "unusable"
        raise CheckpointError(f"{path} is not a readable checkpoint: {load_failure(path, exc)}") from None
    if isinstance(data, dict) and data.get("format") in legacy_formats:
        return data
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a backpropamine-gym checkpoint (expected format {FORMAT!r})")
    if kind is not None and data.get("kind", "rl") != kind:
        raise CheckpointError(
            f"{path} is a checkpoint of a {data.get('kind', 'rl')!r} run, not of a {kind!r} run"
        )
    return data
