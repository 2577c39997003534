"""Fused CPU kernel for a whole BPTT segment of :class:`~bpm_agents.lm.model.PlasticLSTMCell`.

The reference (the cell's ``impl="reference"``) runs the rules of :mod:`bpm_agents.plasticity`
through autograd, one step at a time, which makes about ten (B, H, H) element-wise passes forward
and twenty backward per step, each over the whole batch's traces. Here one
``torch.autograd.Function`` runs a whole segment of one layer: its forward and hand-written
backward are a C++ kernel, ``csrc/plastic_lstm.cpp`` (built like :mod:`bpm_agents.ops.plastic_rnn`'s:
system C++ compiler at first use, cached on disk, loaded with ctypes, no PyTorch headers) that owns the LSTM gates too and works
through the segment one batch element at a time (the batch split over ``torch.get_num_threads()``
C++ threads), so an element's (H, H) traces stay in the core's cache from one step to the next
instead of streaming the whole batch's through memory every step:

* forward, per step: gates = drive + h_{t-1} W, the cell, the modulator and rates, then ONE pass
  over the element's traces (updated in place) that gives, while the new Hebb is in registers, the
  next step's plastic input sum_i h_i alpha_ij Hebb'_ij. It keeps no traces for the backward, only
  the (B, T, H)-sized activities and rates, so training holds no (B, T, H, H) arrays.
* backward, per element: first its traces after every step are recomputed from the segment's
  initial state and the kept activities (a per-thread scratch of T (H, H) arrays, which stays in
  cache), with the clip mask; then the steps in reverse, the gradients of Hebb and E updated in
  place: ONE pass over the traces per step gives the gradients of Hebb, E, alpha, the rates,
  h_{t-1}, g_t and h_t, then the cell and h_{t-1} W^T. What is a sum over the batch and the steps
  (the gradients of W, of the input drive's weights, of the modulator and fan-out parameters) is
  left to torch.

The arithmetic restates the rules (:mod:`bpm_agents.plasticity`, the definition) as the cell uses
them (pre = h_{t-1}, post = g_t, modulator read from h_t); tests/test_lm_fast_step.py compares both
paths to rounding::

    i, f, o = sigmoid(drive_{i,f,o} + h_{t-1} W_{i,f,o})
    g = tanh(drive_g + h_{t-1} W_g + sum_i h_{t-1,i} alpha_ij Hebb_ij);  c = f c + i g;  h = o tanh(c)
    M = act(w_M . h + b_M),  R_j = eta (hebbian) | M (scalar) | v_j M + u_j (fan-out)
    hebbian / simple:  Hebb <- clip(Hebb + R_j (h_{t-1,i} g_j))
    retroactive:       Hebb <- clip(Hebb + R_j E_ij);  E <- (1 - eta_e) E + eta_e (h_{t-1,i} g_j)

Supported: CPU, float32 / float64 (inputs, state and parameters in one dtype), the plastic rules
with a scalar eta, no or per-neuron fan-out and the modulator reading h_t; alpha's shape, init and
gradient scale (a hook on the parameter) and the fan-out init need nothing from the kernel. Not
supported (``auto`` runs the reference, ``fast`` refuses, see :func:`unsupported_reason`):
``eta_shape="connection"``, ``fanout="connection"``, ``modulator_input="previous"``. First-order
gradients only (no double backward). The rule ``none`` has no plastic part and always runs the reference.
``BPM_DISABLE_FAST_UNROLL=1`` turns this kernel off too; ``BPM_KERNEL_CACHE`` and
``BPM_KERNEL_CFLAGS`` act as for :mod:`bpm_agents.ops.plastic_rnn`.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bpm_agents.kernel_build import CppKernel
from bpm_agents.ops import buffers

if TYPE_CHECKING:  # pragma: no cover
    from bpm_agents.lm.model import LSTMState, PlasticLSTMCell
    from bpm_agents.plasticity import PlasticityConfig

__all__ = [
    "IMPLS", "kernel_available", "option_reason", "path_of", "unsupported_reason", "use_fast", "step",
    "sequence",
]  # fmt: skip

#: values of the cell's ``impl`` option
IMPLS = ("auto", "fast", "reference")

_RULE_CODES = {"none": 0, "hebbian": 1, "simple": 2, "retroactive": 3}

_SOURCE = Path(__file__).parent / "csrc" / "plastic_lstm.cpp"
_INTS = ("B", "T", "H", "nthreads", "rule", "fanout", "act_tanh")
_DOUBLES = ("clip", "eta", "ee", "bm")
_INPUTS = ("drive", "h0", "c0", "hebb0", "elig0", "W", "A", "wm", "fv", "fu", "hs", "cT", "hebbT", "eligT")
_SAVED = ("acts", "cs", "Ms", "Rs")
_GRADS = (
    "g_hs", "g_cT", "g_hebbT", "g_eligT",
    "g_gates", "g_h0", "g_c0", "g_hebb0", "g_elig0", "g_A", "g_R", "g_a", "g_ee",
)  # fmt: skip


class _Args(ctypes.Structure):
    _fields_ = (
        [(n, ctypes.c_int64) for n in _INTS]
        + [(n, ctypes.c_double) for n in _DOUBLES]
        + [(n, ctypes.c_void_p) for n in _INPUTS]
        + [("save", ctypes.c_int64)]
        + [(n, ctypes.c_void_p) for n in (*_SAVED, "scratch", *_GRADS)]
    )


# 256-bit vectors: with 512 the wide backward loop spills registers (and torch uses AVX2 too)
_KERNEL = CppKernel(
    "plastic_lstm_segment",
    _SOURCE,
    {
        "bpm_lstm_segment_forward": ([ctypes.POINTER(_Args)], None),
        "bpm_lstm_segment_backward": ([ctypes.POINTER(_Args)], None),
    },
    flags=["-mprefer-vector-width=256"],
)


def _library() -> dict[torch.dtype, ctypes.CDLL] | None:
    """The compiled kernels by dtype, built at first use; ``None`` if they cannot be."""
    return _KERNEL.libraries()


def kernel_available() -> bool:
    """True when the C++ kernel is (or can be) built on this machine."""
    return _library() is not None


def unsupported_reason(cell: PlasticLSTMCell, drive: Tensor) -> str | None:
    """Why the fast path cannot run ``cell`` on ``drive`` (``None`` when it can)."""
    if drive.device.type != "cpu" or any(p.device.type != "cpu" for p in cell.parameters()):
        return f"the fast LSTM step runs on CPU only (input on {drive.device})"
    if drive.dtype not in (torch.float32, torch.float64):
        return f"the fast LSTM step needs float32 or float64, got {drive.dtype}"
    if any(p.dtype != drive.dtype for p in cell.parameters()):
        return "the fast LSTM step needs the input and every parameter in one dtype"
    cfg = cell.plasticity
    if cfg.rule not in _RULE_CODES:
        return f"rule {cfg.rule!r} has no fast LSTM step"
    option = option_reason(cfg)
    if option is not None:
        return option
    if _library() is None:
        return f"the C++ kernel is unavailable ({_KERNEL.error})"
    return None


def option_reason(cfg: PlasticityConfig) -> str | None:
    """Why the kernel cannot run the plasticity options of ``cfg`` (``None`` when it can): its
    rates are one scalar or one per post-neuron, and its modulator reads h_t."""
    if cfg.eta_shape != "scalar":
        return f"eta_shape={cfg.eta_shape!r} (the fast LSTM step has one scalar eta)"
    if cfg.fanout == "connection":
        return "fanout='connection' (the fast LSTM step has per-neuron fan-out only)"
    if cfg.modulated and cfg.modulator_input != "new":
        return f"modulator_input={cfg.modulator_input!r} (the fast LSTM step's modulator reads h_t)"
    return None


def path_of(cell: PlasticLSTMCell, drive: Tensor | None = None) -> str:
    """Which path ``cell`` takes under its ``impl`` on a CPU float32 input: ``fast``,
    ``reference`` or ``reference (<why>)`` when ``auto`` falls back."""
    if drive is None:
        drive = torch.zeros(1, 1, 4 * cell.hidden_size, dtype=cell.weight_hh.dtype)
    if cell.impl == "reference":
        return "reference"
    if not cell.plasticity.plastic:
        return "reference (no plastic part)"
    reason = unsupported_reason(cell, drive)
    return "fast" if reason is None else f"reference ({reason})"


def use_fast(cell: PlasticLSTMCell, drive: Tensor, impl: str) -> bool:
    """Whether the cell's step takes the fast path for ``impl``.

    ``auto``: the fast path for the plastic rules where it can run (CPU, float32/float64, kernel
    built), the reference otherwise. ``fast``: the fast path, ValueError where it cannot run.
    ``reference``: never. The rule ``none`` (a plain LSTM) has no plastic part, so every ``impl``
    runs the reference arithmetic there.
    """
    if impl == "reference":
        return False
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    if not cell.plasticity.plastic:
        return False
    reason = unsupported_reason(cell, drive)
    if impl == "fast" and reason is not None:
        raise ValueError(f"impl='fast' cannot run here: {reason}")
    return reason is None


def _call(name: str, meta: dict, tensors: dict[str, Tensor | None]) -> None:
    libs = _library()
    assert libs is not None
    ptrs = {k: (None if v is None else v.data_ptr()) for k, v in tensors.items()}
    args = _Args(**meta, **ptrs)
    assert tensors["drive"] is not None
    getattr(libs[tensors["drive"].dtype], name)(ctypes.byref(args))


def _run_forward(
    meta: dict, inputs: dict[str, Tensor | None], save: bool
) -> tuple[dict[str, Tensor | None], dict[str, Tensor | None]]:
    """Outputs (hs, cT, hebbT, eligT) and, when ``save``, what the backward needs (no traces: the
    backward recomputes them)."""
    B, T, H = meta["B"], meta["T"], meta["H"]
    assert inputs["drive"] is not None
    dt = inputs["drive"].dtype
    rule = meta["rule"]
    elig = rule == 3
    out = {
        "hs": torch.empty(B, T, H, dtype=dt),
        "cT": torch.empty(B, H, dtype=dt),
        "hebbT": torch.empty(B, H, H, dtype=dt),
        "eligT": torch.empty(B, H, H, dtype=dt) if elig else None,
    }
    saved: dict[str, Tensor | None] = dict.fromkeys(_SAVED)
    if save:
        saved.update(
            acts=torch.empty(B, T, 4 * H, dtype=dt), cs=torch.empty(B, T, H, dtype=dt),
            Ms=torch.empty(B, T, dtype=dt) if rule in (2, 3) else None, Rs=torch.empty(B, T, H, dtype=dt),
        )  # fmt: skip
    _call("bpm_lstm_segment_forward", {**meta, "save": int(save)}, {**inputs, **out, **saved})
    return out, saved


class _SegmentFunction(torch.autograd.Function):
    """(drive, h0, c0, hebb0, elig0, W, A, eta, eta_e, w_M, b_M, v, u) -> (hs, c_T, hebb_T, elig_T)."""

    @staticmethod
    def forward(ctx, meta, drive, h0, c0, hebb0, elig0, W, A, eta, ee, wm, bm, fv, fu):
        inputs = dict(drive=drive, h0=h0, c0=c0, hebb0=hebb0, elig0=elig0, W=W, A=A, wm=wm, fv=fv, fu=fu)
        out, saved = _run_forward(meta, inputs, save=True)
        ctx.set_materialize_grads(False)  # an output nothing depends on sends None: no zero fill
        ctx.meta = meta
        ctx.has = {k: v is not None for k, v in saved.items()}
        keep = [v for v in saved.values() if v is not None]
        ctx.save_for_backward(h0, c0, hebb0, elig0, W, A, wm, fv, fu, out["hs"], *keep)
        eligT = out["eligT"] if out["eligT"] is not None else torch.empty(0, dtype=drive.dtype)
        return out["hs"], out["cT"], out["hebbT"], eligT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_hs, g_cT, g_hebbT, g_eligT):
        meta = ctx.meta
        B, T, H, rule = meta["B"], meta["T"], meta["H"], meta["rule"]
        h0, c0, hebb0, elig0, W, A, wm, fv, fu, hs, *rest = ctx.saved_tensors
        it = iter(rest)
        saved = {k: (next(it) if has else None) for k, has in ctx.has.items()}
        need = ctx.needs_input_grad
        dt = hs.dtype
        modulated, elig = rule in (2, 3), rule == 3
        nt = max(1, min(meta["nthreads"], B))

        def contiguous(g: Tensor | None) -> Tensor | None:
            return None if g is None else g.contiguous()

        grads = {
            "g_hs": contiguous(g_hs), "g_cT": contiguous(g_cT), "g_hebbT": contiguous(g_hebbT),
            "g_eligT": contiguous(g_eligT) if elig else None,
            "g_gates": torch.empty(B, T, 4 * H, dtype=dt), "g_h0": torch.empty(B, H, dtype=dt),
            "g_c0": torch.empty(B, H, dtype=dt),
            "g_hebb0": torch.empty(B, H, H, dtype=dt) if need[4] else None,
            "g_elig0": torch.empty(B, H, H, dtype=dt) if (elig and need[5]) else None,
            "g_A": torch.zeros(nt, H, H, dtype=dt), "g_R": torch.empty(B, T, H, dtype=dt),
            "g_a": torch.empty(B, T, dtype=dt) if modulated else None,
            "g_ee": torch.empty(B, dtype=dt) if elig else None,
        }  # fmt: skip
        nbytes = nt * T * H * H * (dt.itemsize * (2 if elig else 1) + 1)
        # room for the recomputed traces (one element per thread at a time; reused between calls
        # when over buffers.MIN_BYTES, otherwise left to malloc)
        scratch = buffers.empty((nbytes,), torch.uint8)
        tensors = dict(drive=hs, h0=h0, c0=c0, hebb0=hebb0, elig0=elig0 if elig else None, W=W, A=A, wm=wm,
                       fv=fv, fu=fu, hs=hs, **saved, scratch=scratch, **grads)  # fmt: skip
        _call("bpm_lstm_segment_backward", {**meta, "save": 1}, tensors)
        g_gates = grads["g_gates"]
        g_W = None
        if need[6]:  # sum over b, t of h_{t-1}^T dgates
            h_prev = torch.cat([h0.unsqueeze(1), hs[:, :-1]], dim=1).reshape(B * T, H)
            g_W = h_prev.t() @ g_gates.reshape(B * T, 4 * H)
        g_A = (grads["g_A"][0] if nt == 1 else grads["g_A"].sum(0)) if need[7] else None
        g_R = grads["g_R"]
        g_eta = g_R.sum().reshape(()) if (rule == 1 and need[8]) else None
        g_ee = grads["g_ee"].sum().reshape(()) if (elig and need[9]) else None
        g_wm = g_bm = g_fv = g_fu = None
        if modulated:
            g_a = grads["g_a"]
            g_wm = g_a.reshape(1, B * T) @ hs.reshape(B * T, H) if need[10] else None
            g_wm = g_wm.reshape(H) if g_wm is not None else None
            g_bm = g_a.sum().reshape(1) if need[11] else None
            if meta["fanout"]:
                g_fv = saved["Ms"].reshape(1, B * T) @ g_R.reshape(B * T, H) if need[12] else None
                g_fv = g_fv.reshape(H) if g_fv is not None else None
                g_fu = g_R.sum((0, 1)) if need[13] else None
        return (
            None, g_gates if need[1] else None, grads["g_h0"] if need[2] else None,
            grads["g_c0"] if need[3] else None, grads["g_hebb0"], grads["g_elig0"], g_W, g_A,
            g_eta, g_ee, g_wm, g_bm, g_fv, g_fu,
        )  # fmt: skip


class _Prepared:
    """The cell's parameters in the kernel's layout."""

    def __init__(self, cell: PlasticLSTMCell, batch: int, steps: int) -> None:
        cfg, syn = cell.plasticity, cell.synapses
        H = cell.hidden_size
        self.elig = cfg.eligibility
        modulated = cfg.modulated
        # per-neuron alpha is broadcast to (H, H); autograd sums its gradient back
        A = (syn.alpha.expand(H, H) if syn.alpha.dim() == 1 else syn.alpha).contiguous()
        eta = syn.eta if cfg.rule == "hebbian" else None
        ee = syn.eta_e if self.elig else None
        bm = syn.modulator.bias if modulated else None
        self.params = (
            cell.weight_hh.contiguous(), A, eta, ee,
            syn.modulator.weight.reshape(H).contiguous() if modulated else None,
            bm,
            syn.fanout_weight.contiguous() if cfg.fanout else None,
            syn.fanout_bias.contiguous() if cfg.fanout else None,
        )  # fmt: skip
        self.meta = {
            "B": batch, "T": steps, "H": H, "nthreads": max(1, torch.get_num_threads()),
            "rule": _RULE_CODES[cfg.rule], "fanout": int(bool(cfg.fanout)),
            "act_tanh": int(cfg.modulator_activation == "tanh"), "clip": float(cfg.clip),
            "eta": float(eta.detach()) if eta is not None else 0.0,
            "ee": float(ee.detach()) if ee is not None else 0.0,
            "bm": float(bm.detach()) if bm is not None else 0.0,
        }  # fmt: skip


def _check_state(cell: PlasticLSTMCell, drive: Tensor, state: LSTMState) -> None:
    B, H, cfg = drive.shape[0], cell.hidden_size, cell.plasticity
    for name, t in zip(state._fields, state):
        if t.dtype != drive.dtype or t.device.type != "cpu":
            raise ValueError(
                f"state.{name} must be a CPU {drive.dtype} tensor like the input, got {t.dtype} on {t.device}"
            )
    if state.hidden.shape != (B, H) or state.cell.shape != (B, H):
        raise ValueError(
            f"state.hidden and state.cell must have shape ({B}, {H}), "
            f"got {tuple(state.hidden.shape)}, {tuple(state.cell.shape)}"
        )
    if state.hebb.shape != (B, H, H):
        raise ValueError(f"state.hebb must have shape ({B}, {H}, {H}), got {tuple(state.hebb.shape)}")
    if cfg.eligibility and state.elig.shape != (B, H, H):
        raise ValueError(f"state.elig must have shape ({B}, {H}, {H}), got {tuple(state.elig.shape)}")


def sequence(
    cell: PlasticLSTMCell, drive: Tensor, state: LSTMState
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """A segment on the fast path; same contract and numbers (to rounding) as the reference.

    Args:
        cell: the cell (its parameters and plasticity config).
        drive: (B, T, 4H) input drive W_x x + b, T >= 1.
        state: (hidden (B, H), cell (B, H), hebb (B, H, H), elig (B, H, H) or (B, 0, 0)).
    Returns:
        hidden (B, T, H) and the final (h, c, hebb, elig); an unused eligibility trace is passed
        through.
    """
    if drive.dim() != 3 or drive.shape[1] < 1 or drive.shape[2] != 4 * cell.hidden_size:
        raise ValueError(
            f"drive must have shape (B, T >= 1, {4 * cell.hidden_size}), got {tuple(drive.shape)}"
        )
    B, T = drive.shape[:2]
    _check_state(cell, drive, state)
    prep = _Prepared(cell, B, T)
    h0, c0, hebb0, elig0 = (t.contiguous() for t in state)
    elig_in = elig0 if prep.elig else None
    tensors = (drive.contiguous(), h0, c0, hebb0, elig_in, *prep.params)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        hs, cT, hebbT, eligT = _SegmentFunction.apply(prep.meta, *tensors)
    else:
        W, A, _, _, wm, _, fv, fu = prep.params
        inputs = dict(
            drive=tensors[0], h0=h0, c0=c0, hebb0=hebb0, elig0=elig_in, W=W, A=A, wm=wm, fv=fv, fu=fu
        )
        with torch.no_grad():
            out, _ = _run_forward(prep.meta, inputs, save=False)
        hs, cT, hebbT, eligT = out["hs"], out["cT"], out["hebbT"], out["eligT"]
    return hs, (hs[:, -1], cT, hebbT, eligT if prep.elig else state.elig)


def step(cell: PlasticLSTMCell, drive: Tensor, state: LSTMState) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The cell's step on the fast path (a segment of one step).

    Args:
        cell: the cell (its parameters and plasticity config).
        drive: (B, 4H) input drive W_x x + b.
        state: (hidden (B, H), cell (B, H), hebb (B, H, H), elig (B, H, H) or (B, 0, 0)).
    Returns:
        (h, c, hebb, elig) after the step; an unused eligibility trace is passed through.
    """
    if drive.dim() != 2:
        raise ValueError(f"drive must have shape (B, {4 * cell.hidden_size}), got {tuple(drive.shape)}")
    return sequence(cell, drive.unsqueeze(1), state)[1]
