"""Command-line flags generated from config dataclasses: each setting is declared once, as a field.

A field's flag comes from its name (``hidden_size`` -> ``--hidden-size``) and its type from the
annotation; the rest lives in the field's ``metadata`` (:func:`opt` builds it)::

    @dataclass(frozen=True)
    class MyConfig:
        lr: float | None = field(default=None, metadata=opt("learning rate", default="per task: 1e-4"))
        fanout: bool = field(default=False, metadata=opt("per-neuron modulation"))

Metadata keys: ``help`` (the help text), ``flag`` (another flag name, without dashes),
``aliases`` (old spellings, still accepted, hidden from ``--help``; each use prints one
deprecation line on stderr), ``choices``, ``default`` (how ``--help`` describes a default
that depends on the task or algorithm, where the field's own default is ``None``), ``cli``
(``False``: no flag) and ``metavar``.

Types: ``int``, ``float``, ``str``, ``bool`` (``--x/--no-x``), ``X | None``, ``tuple[int, ...]``
/ ``list[int]`` (comma-separated: ``--net-arch 64,64``), ``dict`` (a JSON object),
``Literal[...]`` (its values are the choices) and ``float | str`` (a number if it reads as one).

Generated flags have no argparse default: a flag left out is absent from the parsed namespace,
so the config's own default (or its ``resolve``) applies, and :meth:`Flags.given` tells exactly
which settings the command line gave (the resume-conflict check needs that).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DefaultsHelpFormatter", "Flag", "Flags", "add_run_flags", "opt", "rename_keys", "set_threads"]


def opt(
    help: str,
    *,
    flag: str | None = None,
    aliases: Iterable[str] = (),
    choices: Iterable[Any] | None = None,
    default: str | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> dict[str, Any]:
    """The ``metadata`` of a config field that becomes a flag (see the module docstring)."""
    meta: dict[str, Any] = {"help": help}
    if flag is not None:
        meta["flag"] = flag
    if aliases:
        meta["aliases"] = tuple(aliases)
    if choices is not None:
        meta["choices"] = tuple(choices)
    if default is not None:
        meta["default"] = default
    if metavar is not None:
        meta["metavar"] = metavar
    if not cli:
        meta["cli"] = False
    return meta


def rename_keys(d: Any, renamed: Mapping[str, str]) -> Any:
    """A saved config dict with the old keys of renamed fields mapped to the new names.

    A dict holding both spellings keeps the new one. Anything but a dict is returned as it is
    (the class's ``from_dict`` reports it).
    """
    if not isinstance(d, dict):
        return d
    out = {}
    for key, value in d.items():
        new = renamed.get(key, key)
        if new != key and new in d:
            continue
        out[new] = value
    return out


def _strip_none(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); other types -> (type, False)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True  # noqa: UP007
    return tp, False


def _kind(tp: Any) -> str:
    """How a flag of this (None-stripped) type is parsed."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "bool"
    if tp in (int, float, str):
        return tp.__name__
    if origin is typing.Literal:
        return "literal"
    if origin in (list, tuple):
        return "sequence"
    if tp is dict or origin is dict:
        return "json"
    if origin in (typing.Union, types.UnionType) and set(args) == {float, str}:
        return "float_or_str"
    raise TypeError(f"no flag type for {tp!r}")


def _show(value: Any) -> str:
    """A default as ``--help`` prints it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


@dataclass
class Flag:
    """One generated flag: the config field it sets and how it reads on the command line."""

    field: str
    flag: str  # "--hidden-size"
    dest: str
    kind: str
    aliases: tuple[str, ...] = ()
    item: Any = None  # the element type of a sequence
    container: Any = tuple
    hidden: bool = False
    prefix: str = ""

    def convert(self, value: Any) -> Any:
        """The config value of what argparse parsed (JSON and sequences are parsed here, so the
        message names the flag as the user wrote it)."""
        if self.kind == "json":
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self.flag} must be a JSON object, got {value!r} ({exc})") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"{self.flag} must be a JSON object, got {value!r}")
            return parsed
        if self.kind == "sequence":
            item = self.item if self.item in (int, float, str) else str
            try:
                parts = [item(s.strip()) for s in value.split(",") if s.strip()]
            except ValueError:
                what = {int: "integers like '64,64'", float: "numbers like '0.1,0.2'"}[item]
                raise ValueError(f"{self.flag} must be comma-separated {what}, got {value!r}") from None
            return list(parts) if self.container is list else tuple(parts)
        return value


class _Alias(argparse.Action):
    """An old spelling of a flag: stores into the flag's dest and says once that it was renamed."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        print(f"{parser.prog}: note: {option_string} is now {self.new}", file=sys.stderr)
        if self.nargs == 0:
            values = self.const
        setattr(namespace, self.dest, values)


class Flags:
    """The flags generated from config dataclasses on one parser, and the way back to configs.

    ``add`` puts a class's fields on a parser (or argument group); after ``parse_args``,
    ``given(args)`` is the field -> value dict of the flags given explicitly, ``kwargs(cls, given)``
    the part of it that ``cls`` takes, and ``flag_of(field)`` the spelling for messages.
    """

    def __init__(self) -> None:
        self.flags: dict[str, Flag] = {}

    def add(
        self,
        parser: argparse.ArgumentParser | argparse._ArgumentGroup,
        cls: type,
        *,
        fields: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        defaults: Mapping[str, Any] | None = None,
        hidden: bool = False,
        dest_prefix: str = "",
    ) -> list[Flag]:
        """Add a flag for each field of ``cls`` (all, or ``fields``, less ``exclude``).

        Args:
            defaults: how ``--help`` describes the defaults: label -> a dataclass (or a dict of
                field values) whose value it shows, e.g. ``{"plastic-a2c": A2CConfig,
                "plastic-ppo": PPOConfig}`` prints ``default: plastic-a2c 0.9, plastic-ppo 0.99``
                where they differ and one value where they agree. Default: ``cls`` itself.
            hidden: accepted but not listed in ``--help`` (e.g. to refuse them with a message).
            dest_prefix: prefix of the argparse dests, to keep two sets apart on one parser.
        """
        hints = typing.get_type_hints(cls)
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        names = list(fields) if fields is not None else list(by_name)
        skip = set(exclude)
        added = []
        for name in names:
            if name in skip:
                continue
            f = by_name[name]
            meta = self._metadata(cls, name)
            if meta.get("cli", True) is False:
                continue
            tp, _optional = _strip_none(hints[name])
            kind = _kind(tp)
            flag = "--" + meta.get("flag", name).replace("_", "-")
            spec = Flag(
                field=name,
                flag=flag,
                dest=dest_prefix + name,
                kind=kind,
                aliases=tuple("--" + a.replace("_", "-") for a in meta.get("aliases", ())),
                hidden=hidden,
                prefix=dest_prefix,
            )
            kwargs: dict[str, Any] = {"dest": spec.dest, "default": argparse.SUPPRESS}
            choices = meta.get("choices")
            if kind == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            elif kind in ("int", "float"):
                kwargs["type"] = int if kind == "int" else float
                kwargs["metavar"] = meta.get("metavar", "N" if kind == "int" else "X")
            elif kind == "literal":
                choices = typing.get_args(tp)
            elif kind == "float_or_str":
                kwargs["type"] = _float_or_str
                kwargs["metavar"] = meta.get("metavar", "X")
            elif kind == "sequence":
                origin, args = typing.get_origin(tp), typing.get_args(tp)
                spec.container = origin
                spec.item = args[0] if args else str
                kwargs["metavar"] = meta.get("metavar", "A,B,...")
            elif kind == "json":
                kwargs["metavar"] = meta.get("metavar", "JSON")
            elif "metavar" in meta:
                kwargs["metavar"] = meta["metavar"]
            if choices is not None:
                kwargs["choices"] = tuple(choices)
                kwargs.pop("metavar", None)
            kwargs["help"] = argparse.SUPPRESS if hidden else self._help(cls, name, f, meta, defaults)
            parser.add_argument(flag, **kwargs)
            for alias in spec.aliases:
                alias_kwargs = {k: v for k, v in kwargs.items() if k not in ("action", "help", "dest")}
                if kind == "bool":
                    alias_kwargs.update(nargs=0, const=True)
                parser.add_argument(
                    alias, action=_Alias, new=flag, dest=spec.dest, help=argparse.SUPPRESS, **alias_kwargs
                )
            self.flags[spec.dest] = spec
            added.append(spec)
        return added

    @staticmethod
    def _metadata(cls: type, name: str) -> Mapping[str, Any]:
        """The field's metadata, from the first class of the MRO that gives it one (a subclass
        that only changes a default keeps the help text of its base)."""
        for klass in cls.__mro__:
            f = getattr(klass, "__dataclass_fields__", {}).get(name)
            if f is not None and f.metadata:
                return f.metadata
        return {}

    def _help(
        self,
        cls: type,
        name: str,
        f: dataclasses.Field,
        meta: Mapping[str, Any],
        defaults: Mapping[str, Any] | None,
    ) -> str:
        text = meta.get("help", "")
        sources = defaults if defaults is not None else {"": cls}
        shown: dict[str, str] = {}
        for label, source in sources.items():
            value = _default_of(source, name)
            if value is dataclasses.MISSING:
                continue
            if value is None:
                described = meta.get("default")
                if described is None:
                    continue
                shown[label] = described
            else:
                shown[label] = _show(value)
        if shown:
            groups: dict[str, list[str]] = {}  # value -> the labels that have it, in order
            for label, value in shown.items():
                groups.setdefault(value, []).append(label)
            if len(groups) == 1:
                text += f" (default: {next(iter(groups))})"
            else:
                text += " (default: " + "; ".join(f"{', '.join(k)} {v}" for v, k in groups.items()) + ")"
        return text.replace("%", "%%")

    def given(self, args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
        """Field -> config value of the generated flags given on the command line (of the set
        added with ``dest_prefix=prefix``), in the order of the fields.

        Raises:
            ValueError: a JSON or comma-separated value that does not parse, naming the flag.
        """
        return {
            spec.field: spec.convert(getattr(args, spec.dest))
            for spec in self.flags.values()
            if spec.prefix == prefix and hasattr(args, spec.dest)
        }

    def flag_of(self, field: str, prefix: str = "") -> str:
        """The flag of a field, as ``--help`` lists it."""
        return self.flags[prefix + field].flag

    @staticmethod
    def kwargs(cls: type, given: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``given`` that ``cls`` has fields for."""
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in given.items() if k in names}

    def conflicts(self, given: Mapping[str, Any], saved: Mapping[str, Any]) -> list[str]:
        """Given settings whose value differs from a saved config (field -> value), one phrase
        each, e.g. ``--lr 0.001 (saved: 0.0001)``; lists and tuples compare as equal sequences."""
        out = []
        for name, value in given.items():
            if name not in saved:
                continue
            old = saved[name]
            same = value == old or (
                isinstance(value, (list, tuple))
                and isinstance(old, (list, tuple))
                and list(value) == list(old)
            )
            if not same:
                shown = json.dumps(list(value) if isinstance(value, tuple) else value)
                if not isinstance(value, (dict, list, tuple)):
                    shown = str(value)
                out.append(f"{self.flag_of(name)} {shown} (saved: {json.dumps(old)})")
        return out


def _float_or_str(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _default_of(source: Any, name: str) -> Any:
    """A field's default in a dataclass (or a dict or a dataclass instance)."""
    if isinstance(source, Mapping):
        return source.get(name, dataclasses.MISSING)
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        return getattr(source, name, dataclasses.MISSING)
    f = getattr(source, "__dataclass_fields__", {}).get(name)
    if f is None:
        return dataclasses.MISSING
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to a flag's help, except where there is nothing to say (a default of
    ``None`` or ``False``) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


# ------------------------------------------------------------------ run control, declared once
def _device_choices() -> tuple[str, ...]:
    return ("cpu", "cuda", "auto")


def add_run_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    out: str | None = "run folder (created; must be new unless --resume)",
    out_required: bool = True,
    updates: str | None = "total number of updates of the run",
    updates_default: int | None = 1000,
    resume: str | None = None,
    checkpoint_every: int | None = 100,
    checkpoint_help: str = "save a checkpoint every K updates (and at the end, and on Ctrl-C or SIGTERM, which stop after the current update and exit 130)",
    device_default: str = "auto",
    threads: bool = True,
    progress: bool = True,
    tensorboard: bool | None = True,
) -> None:
    """The run-control flags every training command shares: ``--out``, ``--updates``,
    ``--resume``, ``--threads``, ``--device``, ``--checkpoint-every``, ``--progress/--no-progress``
    and ``--tensorboard/--no-tensorboard``; each argument switches one off (``None``/``False``)
    or sets its help text or default (``tensorboard`` is the default of that flag)."""
    if out is not None:
        parser.add_argument(
            "--out", required=out_required, default=argparse.SUPPRESS if out_required else None, help=out
        )
    if updates is not None:
        if updates_default is None:
            parser.add_argument(
                "--updates", type=int, required=True, default=argparse.SUPPRESS, metavar="N", help=updates
            )
        else:
            parser.add_argument(
                "--updates",
                type=int,
                default=updates_default,
                metavar="N",
                help=f"{updates} (default: %(default)s)",
            )
    if resume is not None:
        parser.add_argument("--resume", action="store_true", help=resume)
    parser.add_argument(
        "--device",
        default=device_default,
        choices=_device_choices(),
        help="'auto' = cuda if available (default: %(default)s)",
    )
    if checkpoint_every is not None:
        parser.add_argument(
            "--checkpoint-every",
            type=int,
            default=checkpoint_every,
            metavar="K",
            help=f"{checkpoint_help} (default: %(default)s)",
        )
    if threads:
        parser.add_argument(
            "--threads",
            type=int,
            default=None,
            metavar="N",
            help="torch CPU threads (default: torch's choice; 1 is fastest when several runs share the machine)",
        )
    if progress:
        parser.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="show a progress bar (default: on)",
        )
    if tensorboard is not None:
        parser.add_argument(
            "--tensorboard",
            action=argparse.BooleanOptionalAction,
            default=tensorboard,
            help=f"write TensorBoard logs (default: {'on' if tensorboard else 'off'})",
        )


def set_threads(threads: int | None) -> None:
    """Apply ``--threads``; ``ValueError`` naming the value when it is below 1."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
