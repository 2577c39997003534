"""Plasticity statistics of a :class:`~bpm_agents.lm.model.LanguageModel`, per plastic layer.

Written to the run's ``progress.csv`` at every validation check, so that a modulator that has collapsed to a
constant (M(t) near +-1 in every stream, i.e. a fixed-rate Hebbian rule) or traces stuck at the clip
show up without a debugger. Measured on a prefix of the validation stream with the reference step
(the fast kernel does not return M or the plastic input), in eval mode, without gradients, from a
zero state:

=====================  ==========================================================================
``alpha_abs``          mean |alpha| over its entries
``w_abs``              mean |W_hg| of the fixed matrix that the plastic part adds to
``hebb_at_clip``       share of Hebb entries with |Hebb| at the clip, averaged over the steps
``plastic_ratio``      sum |h_{t-1} (alpha * Hebb)| / sum |h_{t-1} W_hg| over streams, steps, units
``m_mean``             mean of M(t) over streams and steps
``m_std_t``            standard deviation of M over time within a stream, averaged over streams
``m_saturated``        fraction of (stream, step) with |M(t)| > 0.95
=====================  ==========================================================================

The M columns are empty for unmodulated variants, all of them for the baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bpm_agents.lm.corpus import batchify

if TYPE_CHECKING:  # pragma: no cover
    from bpm_agents.lm.model import LanguageModel

#: per-layer statistics, in log order; columns are ``l<k>_<name>`` with k from 1
STAT_NAMES = ("alpha_abs", "w_abs", "hebb_at_clip", "plastic_ratio", "m_mean", "m_std_t", "m_saturated")
#: |M| above this counts as saturated
SATURATION = 0.95


def stat_columns(n_layers: int) -> list[str]:
    """The log columns of the statistics of ``n_layers`` layers."""
    return [f"l{k + 1}_{name}" for k in range(n_layers) for name in STAT_NAMES]


def modulator_stats(m: Tensor, saturation: float = SATURATION) -> dict[str, float]:
    """Mean, within-stream standard deviation over time and saturation of M.

    Args:
        m: (B, T) M(t) of B streams over T steps.
    Returns:
        ``m_mean``; ``m_std_t``: the population standard deviation over t of each stream, averaged
        over streams (0 for a constant M); ``m_saturated``: the fraction of entries with
        |M| > ``saturation``.
    """
    if m.dim() != 2 or m.shape[1] < 1:
        raise ValueError(f"m must have shape (B, T >= 1), got {tuple(m.shape)}")
    m = m.double()
    return {
        "m_mean": m.mean().item(),
        "m_std_t": m.std(dim=1, unbiased=False).mean().item(),
        "m_saturated": (m.abs() > saturation).double().mean().item(),
    }


def clip_share(hebb: Tensor, clip: float) -> float:
    """Share of the entries of ``hebb`` at the clip (|Hebb| >= clip, to float rounding)."""
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip!r}")
    if hebb.numel() == 0:
        raise ValueError("hebb is empty (the rule none has no trace)")
    # torch.clamp returns exactly +-clip; the tolerance only absorbs a float32 clip value
    return (hebb.abs() >= clip * (1 - 1e-6)).double().mean().item()


@torch.no_grad()
def plasticity_stats(
    model: LanguageModel, ids: Tensor, batch_size: int = 10, steps: int = 200
) -> dict[str, float | None]:
    """Per-layer statistics (see the module doc) over the first ``steps`` tokens of ``batch_size``
    streams cut from ``ids``; keys from :func:`stat_columns`, ``None`` where not applicable."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    streams = batchify(ids, batch_size).to(device)[:, :steps]
    state = model.initial_state(streams.shape[0], device)
    layers = list(model.layers)
    plastic_abs = [0.0] * len(layers)
    fixed_abs = [0.0] * len(layers)
    at_clip = [0.0] * len(layers)
    mods: list[list[Tensor]] = [[] for _ in layers]
    x = model.embedding(streams)  # dropout is off in eval mode
    for k, layer in enumerate(layers):
        s = state[k]
        drive = layer.input_drive(x)
        outs = []
        for t in range(streams.shape[1]):
            parts = layer.reference_step(drive[:, t], s)
            s = parts.state
            outs.append(s.hidden)
            fixed_abs[k] += parts.fixed.abs().double().sum().item()
            if parts.plastic is not None:
                plastic_abs[k] += parts.plastic.abs().double().sum().item()
                at_clip[k] += clip_share(s.hebb, layer.plasticity.clip)
            if parts.modulation is not None:
                mods[k].append(parts.modulation)
        x = torch.stack(outs, dim=1)
    model.train(was_training)
    result: dict[str, float | None] = dict.fromkeys(stat_columns(len(layers)))
    T = streams.shape[1]
    for k, layer in enumerate(layers):
        p = f"l{k + 1}_"
        if not layer.plasticity.plastic:
            continue
        H = layer.hidden_size
        result[p + "alpha_abs"] = layer.synapses.alpha.abs().mean().item()
        result[p + "w_abs"] = layer.weight_hh[:, 2 * H : 3 * H].abs().mean().item()
        result[p + "hebb_at_clip"] = at_clip[k] / T
        result[p + "plastic_ratio"] = plastic_abs[k] / fixed_abs[k] if fixed_abs[k] > 0 else float("nan")
        if mods[k]:
            for name, v in modulator_stats(torch.cat(mods[k], dim=1)).items():
                result[p + name] = v
    return result


__all__ = ["SATURATION", "STAT_NAMES", "clip_share", "modulator_stats", "plasticity_stats", "stat_columns"]
