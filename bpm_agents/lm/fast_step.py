"""Fused CPU kernel for the plastic part of :class:`~bpm_agents.lm.model.PlasticLSTMCell`.

The reference step (the cell's ``impl="reference"``) runs the rules of
:mod:`bpm_agents.plasticity` through autograd, which makes about ten (B, H, H) element-wise passes
forward and twenty backward per step. Here the gate arithmetic stays the reference's torch code
(small (B, H) tensors, plain autograd) and the plastic part of each step is one
``torch.autograd.Function`` whose forward and hand-written backward are a small C++ kernel (built
like :mod:`bpm_agents.fast_unroll`'s: system C++ compiler at first use, cached on disk, loaded
with ctypes, no PyTorch headers). Per batch element (the batch split over
``torch.get_num_threads()`` C++ threads):

* forward: the modulator and rates, then ONE pass over the traces that writes the new traces, a
  byte mask of where the clip let the gradient through, and, while the new Hebb is in registers,
  the *next* step's plastic input sum_i h_i alpha_ij Hebb'_ij (so a segment computes the plastic
  input through :meth:`PlasticSynapses.contribution` only at its first step);
* backward: ONE pass over the traces gives the gradients of Hebb, E, alpha, the rates, h_{t-1},
  g and h; it needs neither the old Hebb (the mask replaces it) nor a second pass for the plastic
  input (that gradient arrives with the next step's).

The arithmetic restates the rules (:mod:`bpm_agents.plasticity`, the definition) as the cell uses
them (pre = h_{t-1}, post = g_t, modulator read from h_t); tests/test_lm_fast_step.py compares both
paths to rounding::

    g = tanh(gates_g + sum_i s_i (alpha_ij Hebb_ij)),  s = h_{t-1}   (torch; the sum from here)
    M = act(w_M . h + b_M),  R_j = eta (hebbian) | M (scalar) | v_j M + u_j (fan-out)
    hebbian / simple:  Hebb <- clip(Hebb + R_j (s_i g_j))
    retroactive:       Hebb <- clip(Hebb + R_j E_ij);  E <- (1 - eta_e) E + eta_e (s_i g_j)

Supported: CPU, float32 / float64 (inputs, state and parameters in one dtype), the plastic rules
with every option of :class:`~bpm_agents.plasticity.PlasticityConfig`; first-order gradients only
(no double backward). The rule ``none`` has no plastic part and always runs the reference.
``BPM_DISABLE_FAST_UNROLL=1`` turns this kernel off too; ``BPM_KERNEL_CACHE`` and
``BPM_KERNEL_CFLAGS`` act as for :mod:`bpm_agents.fast_unroll`.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bpm_agents.kernel_build import CppKernel

if TYPE_CHECKING:  # pragma: no cover
    from bpm_agents.lm.model import LSTMState, PlasticLSTMCell

__all__ = ["IMPLS", "kernel_available", "unsupported_reason", "use_fast", "step", "sequence"]

#: values of the cell's ``impl`` option
IMPLS = ("auto", "fast", "reference")

_RULE_CODES = {"none": 0, "hebbian": 1, "simple": 2, "retroactive": 3}

_SOURCE = r"""
// The plastic part of one step of the plastic LSTM cell (bpm_agents/lm/model.py) and its backward.
// The rules are DEFINED in bpm_agents/plasticity.py; this restates that arithmetic (tests compare).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

extern "C" {
struct Args {
  int64_t B, H, nthreads, rule, fanout, act_tanh;
  double clip, eta, ee, bm;
  // forward inputs: s = h_{t-1} (pre), x = g_t (post), h = h_t (read by the modulator)
  void *s, *x, *h, *Hp, *Ep, *A, *wm, *fv, *fu;
  // forward outputs: new traces, pn = the next step's plastic input sum_i h_i alpha_ij Hebb'_ij,
  // M, the rates R, mk (uint8, may be nullptr): 1 where the clip let the gradient through
  void *Hn, *En, *pn, *M, *R, *mk;
  // backward inputs (gHn == nullptr: no gradient reaches this step's outputs) and outputs
  void *gHn, *gEn, *gpn;
  void *gs, *gx, *gh, *gH, *gE, *gA, *gR, *ga, *gee;
};
}

namespace {

enum { HEBBIAN = 1, SIMPLE = 2, RETRO = 3 };

// fn(b, thread index) for every batch element: batch split over the threads round-robin
template <typename F>
void over_batch(int64_t B, int64_t nthreads, F fn) {
  const int64_t n = std::max<int64_t>(1, std::min(nthreads, B));
  auto worker = [&](int64_t t) {
    for (int64_t b = t; b < B; b += n) fn(b, t);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < n; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (auto &th : pool) th.join();
}

// One batch element: rates, then ONE pass that writes the new traces, the clip mask and, while
// Hebb' is in registers, the next step's plastic input.
template <typename R, int RULE>
void forward_one(const Args &a, int64_t b, uint8_t *sink) {
  const int64_t H = a.H, HH = H * H;
  const R c = (R)a.clip, ee = (R)a.ee;
  const R *s = (const R *)a.s + b * H, *x = (const R *)a.x + b * H, *h = (const R *)a.h + b * H;
  const R *A = (const R *)a.A;
  R *rate = (R *)a.R + b * H;
  if (RULE == HEBBIAN) {
    for (int64_t j = 0; j < H; ++j) rate[j] = (R)a.eta;
  } else {
    const R *wm = (const R *)a.wm;
    R mod_in = 0;
    for (int64_t j = 0; j < H; ++j) mod_in += h[j] * wm[j];
    mod_in += (R)a.bm;
    const R m = a.act_tanh ? std::tanh(mod_in) : mod_in;
    ((R *)a.M)[b] = m;
    const R *fv = (const R *)a.fv, *fu = (const R *)a.fu;
    for (int64_t j = 0; j < H; ++j) rate[j] = a.fanout ? m * fv[j] + fu[j] : m;
  }
  const R *Hp = (const R *)a.Hp + b * HH;
  R *Hn = (R *)a.Hn + b * HH, *pn = (R *)a.pn + b * H;
  const R *Ep = RULE == RETRO ? (const R *)a.Ep + b * HH : nullptr;
  R *En = RULE == RETRO ? (R *)a.En + b * HH : nullptr;
  uint8_t *mk = a.mk ? (uint8_t *)a.mk + b * HH : nullptr;
  const R keep = (R)1 - ee;
  for (int64_t j = 0; j < H; ++j) pn[j] = 0;
  for (int64_t i = 0; i < H; ++i) {
    const R si = s[i], hi = h[i];
    const R *Hi = Hp + i * H, *Ai = A + i * H;
    R *Ho = Hn + i * H;
    uint8_t *Mi = mk ? mk + i * H : sink;
    if (RULE == RETRO) {
      const R *Ei = Ep + i * H;
      R *Eo = En + i * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const R e = Ei[j], z = Hi[j] + rate[j] * e;
        const R hn = std::min(std::max(z, -c), c);
        Ho[j] = hn;
        Mi[j] = (uint8_t)((z >= -c) & (z <= c));  // torch.clamp passes min <= z <= max
        Eo[j] = keep * e + ee * (si * x[j]);
        pn[j] += hi * (Ai[j] * hn);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const R z = Hi[j] + rate[j] * (si * x[j]);
        const R hn = std::min(std::max(z, -c), c);
        Ho[j] = hn;
        Mi[j] = (uint8_t)((z >= -c) & (z <= c));
        pn[j] += hi * (Ai[j] * hn);
      }
    }
  }
}

// One batch element of the backward. The gradient reaching Hebb' is gHn plus what the next
// plastic input sends back (h_i alpha_ij gpn_j); one pass over the traces (each row split in two
// loops that share the row in L1) gives the gradients of Hebb, E, alpha, the rates, s, x and h.
template <typename R, int RULE>
void backward_one(const Args &a, int64_t b, int64_t t, std::vector<R> &buf) {
  const int64_t H = a.H, HH = H * H;
  const R ee = (R)a.ee;
  const R *s = (const R *)a.s + b * H, *x = (const R *)a.x + b * H, *h = (const R *)a.h + b * H;
  const R *A = (const R *)a.A;
  R *gs = (R *)a.gs + b * H, *gx = (R *)a.gx + b * H, *gh = (R *)a.gh + b * H;
  std::fill(buf.begin(), buf.end(), (R)0);
  R *q = buf.data(), *sink = buf.data() + H, *sink2 = buf.data() + 2 * H;  // unwanted rows go to sinks
  const R *rate = (const R *)a.R + b * H;
  const R *Hn = (const R *)a.Hn + b * HH;
  const uint8_t *mk = (const uint8_t *)a.mk + b * HH;
  const R *gHn = (const R *)a.gHn + b * HH, *gpn = (const R *)a.gpn + b * H;
  R *gH = a.gH ? (R *)a.gH + b * HH : nullptr;
  R *gA = a.gA ? (R *)a.gA + t * HH : nullptr;
  R *gR = (R *)a.gR + b * H;
  const R *Ep = RULE == RETRO ? (const R *)a.Ep + b * HH : nullptr;
  const R *gEn = RULE == RETRO ? (const R *)a.gEn + b * HH : nullptr;
  R *gE = (RULE == RETRO && a.gE) ? (R *)a.gE + b * HH : nullptr;
  const R keep = (R)1 - ee;
  R gee = 0;
  for (int64_t i = 0; i < H; ++i) {
    const R si = s[i], hi = h[i];
    const R *Hni = Hn + i * H, *Ai = A + i * H, *gHi = gHn + i * H;
    const uint8_t *Mi = mk + i * H;
    R *gHo = gH ? gH + i * H : sink;
    R *gAi = gA ? gA + i * H : sink2;
    R rs = 0, re = 0, rh = 0;
#pragma omp simd reduction(+ : rh)
    for (int64_t j = 0; j < H; ++j) {  // alpha and h through the next plastic input
      rh += (Ai[j] * Hni[j]) * gpn[j];
      gAi[j] += Hni[j] * (hi * gpn[j]);
    }
    if (RULE == RETRO) {
      const R *Ei = Ep + i * H, *gEi = gEn + i * H;
      R *gEo = gE ? gE + i * H : sink;
#pragma omp simd reduction(+ : rs, re)
      for (int64_t j = 0; j < H; ++j) {
        const R e = Ei[j];
        const R gz = Mi[j] ? gHi[j] + Ai[j] * (hi * gpn[j]) : (R)0;
        const R gn = gEi[j];
        gHo[j] = gz;
        gEo[j] = rate[j] * gz + keep * gn;
        gR[j] += gz * e;
        re += gn * (si * x[j] - e);
        q[j] += gn * si;
        rs += gn * x[j];
      }
      gs[i] = ee * rs;
      gee += re;
    } else {
#pragma omp simd reduction(+ : rs)
      for (int64_t j = 0; j < H; ++j) {
        const R gz = Mi[j] ? gHi[j] + Ai[j] * (hi * gpn[j]) : (R)0;
        gHo[j] = gz;
        q[j] += gz * si;
        rs += gz * (rate[j] * x[j]);
      }
      gs[i] = rs;
    }
    gh[i] = rh;
  }
  if (RULE == RETRO) {
    for (int64_t j = 0; j < H; ++j) gx[j] = ee * q[j];
    ((R *)a.gee)[b] = gee;
  } else {
    for (int64_t j = 0; j < H; ++j) {
      gR[j] = q[j] * x[j];
      gx[j] = rate[j] * q[j];
    }
  }
  if (RULE != HEBBIAN) {  // modulator M = act(w_M . h + b_M)
    const R *fv = (const R *)a.fv, *wm = (const R *)a.wm;
    R gm = 0;
    for (int64_t j = 0; j < H; ++j) gm += gR[j] * (a.fanout ? fv[j] : (R)1);
    const R m = ((const R *)a.M)[b];
    const R ga = a.act_tanh ? gm * ((R)1 - m * m) : gm;
    for (int64_t j = 0; j < H; ++j) gh[j] += ga * wm[j];
    ((R *)a.ga)[b] = ga;
  }
}

template <typename R>
void forward(const Args &a) {
  over_batch(a.B, a.nthreads, [&](int64_t b, int64_t) {
    std::vector<uint8_t> sink(a.H);  // the mask row when no mask is kept
    switch (a.rule) {
      case HEBBIAN: forward_one<R, HEBBIAN>(a, b, sink.data()); break;
      case SIMPLE: forward_one<R, SIMPLE>(a, b, sink.data()); break;
      default: forward_one<R, RETRO>(a, b, sink.data()); break;
    }
  });
}

template <typename R>
void backward(const Args &a) {
  over_batch(a.B, a.nthreads, [&](int64_t b, int64_t t) {
    std::vector<R> buf(3 * a.H);
    switch (a.rule) {
      case HEBBIAN: backward_one<R, HEBBIAN>(a, b, t, buf); break;
      case SIMPLE: backward_one<R, SIMPLE>(a, b, t, buf); break;
      default: backward_one<R, RETRO>(a, b, t, buf); break;
    }
  });
}

}  // namespace

#ifdef BPM_F64
typedef double Real;
#else
typedef float Real;
#endif

extern "C" {
void bpm_lstm_forward(const Args *a) { forward<Real>(*a); }
void bpm_lstm_backward(const Args *a) { backward<Real>(*a); }
}
"""

_PTRS = (
    "s", "x", "h", "Hp", "Ep", "A", "wm", "fv", "fu",
    "Hn", "En", "pn", "M", "R", "mk",
    "gHn", "gEn", "gpn",
    "gs", "gx", "gh", "gH", "gE", "gA", "gR", "ga", "gee",
)  # fmt: skip


class _Args(ctypes.Structure):
    _fields_ = (
        [(n, ctypes.c_int64) for n in ("B", "H", "nthreads", "rule", "fanout", "act_tanh")]
        + [(n, ctypes.c_double) for n in ("clip", "eta", "ee", "bm")]
        + [(n, ctypes.c_void_p) for n in _PTRS]
    )


# 256-bit vectors: with 512 the wide backward loop spills registers (and torch uses AVX2 too)
_KERNEL = CppKernel(
    "plastic_lstm",
    _SOURCE,
    {
        "bpm_lstm_forward": ([ctypes.POINTER(_Args)], None),
        "bpm_lstm_backward": ([ctypes.POINTER(_Args)], None),
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
    """Why the fast step cannot run ``cell`` on ``drive`` (``None`` when it can)."""
    if drive.device.type != "cpu" or any(p.device.type != "cpu" for p in cell.parameters()):
        return f"the fast LSTM step runs on CPU only (input on {drive.device})"
    if drive.dtype not in (torch.float32, torch.float64):
        return f"the fast LSTM step needs float32 or float64, got {drive.dtype}"
    if any(p.dtype != drive.dtype for p in cell.parameters()):
        return "the fast LSTM step needs the input and every parameter in one dtype"
    if cell.plasticity.rule not in _RULE_CODES:
        return f"rule {cell.plasticity.rule!r} has no fast LSTM step"
    if _library() is None:
        return f"the C++ kernel is unavailable ({_KERNEL.error})"
    return None


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


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _call(dtype: torch.dtype, name: str, meta: dict, **ptrs: Tensor | None) -> None:
    libs = _library()
    assert libs is not None
    args = _Args(**meta, **{k: _ptr(v) for k, v in ptrs.items()})
    getattr(libs[dtype], name)(ctypes.byref(args))


def _forward(meta, s, x, h, Hp, Ep, A, wm, fv, fu, save):
    """Run the forward kernel: (Hebb', E', next plastic input, M, R, clip mask or None)."""
    B, H = s.shape
    rule = meta["rule"]
    dt = s.dtype
    modulated, elig = rule in (2, 3), rule == 3
    Hn = torch.empty(B, H, H, dtype=dt)
    En = torch.empty(B, H, H, dtype=dt) if elig else None
    pn = torch.empty(B, H, dtype=dt)
    M = torch.empty(B, dtype=dt) if modulated else None
    R = torch.empty(B, H, dtype=dt)
    mk = torch.empty(B, H, H, dtype=torch.uint8) if save else None
    _call(
        dt, "bpm_lstm_forward", meta, s=s, x=x, h=h, Hp=Hp, Ep=Ep, A=A, wm=wm, fv=fv, fu=fu,
        Hn=Hn, En=En, pn=pn, M=M, R=R, mk=mk,
    )
    return Hn, En, pn, M, R, mk


class _PlasticFunction(torch.autograd.Function):
    """(h_{t-1}, g_t, h_t, Hebb, E, A, eta, eta_e, w_M, b_M, v, u) -> (Hebb', E', next plastic input)."""

    @staticmethod
    def forward(ctx, meta, s, x, h, Hp, Ep, A, eta, ee, wm, bm, fv, fu):  # type: ignore[override]
        Hn, En, pn, M, R, mk = _forward(meta, s, x, h, Hp, Ep, A, wm, fv, fu, save=True)
        ctx.meta = meta
        # the old Hebb is not needed: the clip mask replaces it
        ctx.save_for_backward(s, x, h, Ep, A, wm, fv, Hn, M, R, mk)
        return Hn, En if En is not None else torch.empty(0, dtype=s.dtype), pn

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gHn, gEn, gpn):  # type: ignore[override]
        meta = ctx.meta
        s, x, h, Ep, A, wm, fv, Hn, M, R, mk = ctx.saved_tensors
        B, H = s.shape
        dt = s.dtype
        rule = meta["rule"]
        modulated, elig = rule in (2, 3), rule == 3
        need = ctx.needs_input_grad
        if gHn is None and gpn is None and (not elig or gEn is None):
            return (None,) * 13  # nothing reached this step's outputs
        gHn = torch.zeros(B, H, H, dtype=dt) if gHn is None else gHn.contiguous()
        gpn = torch.zeros(B, H, dtype=dt) if gpn is None else gpn.contiguous()
        if elig:
            gEn = torch.zeros(B, H, H, dtype=dt) if gEn is None else gEn.contiguous()
        else:
            gEn = None
        nt = max(1, min(meta["nthreads"], B))
        gs, gx, gh = (torch.empty(B, H, dtype=dt) for _ in range(3))
        gH = torch.empty(B, H, H, dtype=dt) if need[4] else None
        gE = torch.empty(B, H, H, dtype=dt) if (elig and need[5]) else None
        gA = torch.zeros(nt, H, H, dtype=dt) if need[6] else None
        gR = torch.zeros(B, H, dtype=dt)
        ga = torch.zeros(B, dtype=dt) if modulated else None
        gee = torch.zeros(B, dtype=dt) if elig else None
        _call(
            dt, "bpm_lstm_backward", meta, s=s, x=x, h=h, Ep=Ep, A=A, wm=wm, fv=fv, Hn=Hn, M=M, R=R,
            mk=mk, gHn=gHn, gEn=gEn, gpn=gpn, gs=gs, gx=gx, gh=gh, gH=gH, gE=gE, gA=gA, gR=gR, ga=ga,
            gee=gee,
        )
        g_A = (gA[0] if nt == 1 else gA.sum(0)) if gA is not None else None
        g_eta = gR.sum().reshape(()) if (rule == 1 and need[7]) else None
        g_ee = gee.sum().reshape(()) if (elig and need[8]) else None
        g_wm = g_bm = g_fv = g_fu = None
        if modulated:
            g_wm = ga @ h if need[9] else None
            g_bm = ga.sum().reshape(1) if need[10] else None
            if meta["fanout"]:
                g_fv = M @ gR if need[11] else None
                g_fu = gR.sum(0) if need[12] else None
        return (None, gs, gx, gh, gH, gE, g_A, g_eta, g_ee, g_wm, g_bm, g_fv, g_fu)


class _Prepared:
    """The synapses' parameters in the kernel's layout, gathered once per segment."""

    def __init__(self, cell: PlasticLSTMCell, batch: int) -> None:
        cfg, syn = cell.plasticity, cell.synapses
        H = cell.hidden_size
        self.elig = cfg.eligibility
        modulated = cfg.modulated
        # per-neuron alpha is broadcast to (H, H); autograd sums its gradient back
        self.A = (syn.alpha.expand(H, H) if syn.alpha.dim() == 1 else syn.alpha).contiguous()
        eta = syn.eta if cfg.rule == "hebbian" else None
        ee = syn.eta_e if self.elig else None
        bm = syn.modulator.bias if modulated else None
        self.params = (
            eta, ee,
            syn.modulator.weight.reshape(H).contiguous() if modulated else None,
            bm,
            syn.fanout_weight.contiguous() if cfg.fanout else None,
            syn.fanout_bias.contiguous() if cfg.fanout else None,
        )  # fmt: skip
        self.meta = {
            "B": batch, "H": H, "nthreads": max(1, torch.get_num_threads()), "rule": _RULE_CODES[cfg.rule],
            "fanout": int(cfg.fanout), "act_tanh": int(cfg.modulator_activation == "tanh"),
            "clip": float(cfg.clip),
            "eta": float(eta.detach()) if eta is not None else 0.0,
            "ee": float(ee.detach()) if ee is not None else 0.0,
            "bm": float(bm.detach()) if bm is not None else 0.0,
        }  # fmt: skip


def _check_state(cell: PlasticLSTMCell, drive: Tensor, state: LSTMState) -> None:
    B, H, cfg = drive.shape[0], cell.hidden_size, cell.plasticity
    for name, t in zip(state._fields, state):
        if t.dtype != drive.dtype or t.device.type != "cpu":
            raise ValueError(
                f"state.{name} must be a CPU {drive.dtype} tensor like the input, "
                f"got {t.dtype} on {t.device}"
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


def _one_step(cell, prep: _Prepared, drive: Tensor, state, pl: Tensor):
    """(h, c, hebb, elig, next plastic input) after one step; ``pl`` is this step's plastic input.

    The gate arithmetic is the reference cell's, in torch (vectorised, plain autograd); only the
    plastic part after it runs in the kernel.
    """
    h_prev, c_prev, hebb, elig = state
    gates = torch.addmm(drive, h_prev, cell.weight_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    g = torch.tanh(g + pl)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * g
    h = torch.sigmoid(o) * torch.tanh(c)
    Ep = elig.contiguous() if prep.elig else elig[:0]
    tensors = (h_prev.contiguous(), g, h, hebb.contiguous(), Ep, prep.A, *prep.params)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        Hn, En, pn = _PlasticFunction.apply(prep.meta, *tensors)
    else:
        with torch.no_grad():
            _, _, wm, _, fv, fu = prep.params
            Hn, En, pn, _, _, _ = _forward(prep.meta, *tensors[:6], wm, fv, fu, save=False)
    return h, c, Hn, En if prep.elig else elig, pn


def step(cell: PlasticLSTMCell, drive: Tensor, state: LSTMState) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The cell's step on the fast path (a plastic rule); same contract and numbers (to rounding)
    as the reference.

    Args:
        cell: the cell (its parameters and plasticity config).
        drive: (B, 4H) input drive W_x x + b.
        state: (hidden (B, H), cell (B, H), hebb (B, H, H), elig (B, H, H) or (B, 0, 0)).
    Returns:
        (h, c, hebb, elig) after the step; an unused eligibility trace is passed through.
    """
    B = drive.shape[0]
    _check_state(cell, drive, state)
    pl = cell.synapses.contribution(state.hidden, state.hebb)
    return _one_step(cell, _Prepared(cell, B), drive, state, pl)[:4]


def sequence(cell: PlasticLSTMCell, drive: Tensor, state: LSTMState) -> tuple[Tensor, tuple[Tensor, ...]]:
    """A segment on the fast path: ``drive`` (B, T, 4H) -> hidden (B, T, H) and the final
    (h, c, hebb, elig). Each step's kernel also computes the next step's plastic input, so only the
    first step's goes through :meth:`PlasticSynapses.contribution`."""
    B, T = drive.shape[:2]
    _check_state(cell, drive, state)
    prep = _Prepared(cell, B)
    pl = cell.synapses.contribution(state.hidden, state.hebb)
    st = tuple(state)
    outputs = []
    for t in range(T):
        h, c, Hn, En, pl = _one_step(cell, prep, drive[:, t], st, pl)
        st = (h, c, Hn, En)
        outputs.append(h)
    return torch.stack(outputs, dim=1), st
