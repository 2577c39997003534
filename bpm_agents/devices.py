"""The one place that turns a ``--device`` choice into a torch device."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("cpu", "cuda", "auto")


def resolve_device(name: str | torch.device) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available) as a torch device.

    Raises:
        ValueError: an unknown name, or ``cuda`` on a machine without CUDA.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; allowed: {', '.join(DEVICE_CHOICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
    return torch.device(name)
