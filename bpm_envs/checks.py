"""Checks of user input shared by the package (and by ``bpm_agents``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np


def require_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as int, or raise ``ValueError`` naming it and the allowed range (bools,
    floats and strings are refused). The one integer check of the project."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: the text as an integer >= ``minimum``, else a usage error naming it."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse
