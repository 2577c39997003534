"""Fused CPU kernel for a whole BPTT segment of :class:`~bpm_agents.lm.model.PlasticLSTMCell`.

The reference (the cell's ``impl="reference"``) runs the rules of :mod:`bpm_agents.plasticity`
through autograd, one step at a time, which makes about ten (B, H, H) element-wise passes forward
and twenty backward per step, each over the whole batch's traces. Here one
``torch.autograd.Function`` runs a whole segment of one layer: its forward and hand-written
backward are a C++ kernel (built like :mod:`bpm_agents.ops.plastic_rnn`'s: system C++ compiler at first
use, cached on disk, loaded with ctypes, no PyTorch headers) that owns the LSTM gates too and works
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
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bpm_agents.kernel_build import CppKernel

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

_SOURCE = r"""
// A whole BPTT segment of the plastic LSTM layer (bpm_agents/lm/model.py) and its backward, one
// batch element at a time so that its traces stay in the core's cache from step to step. The
// forward keeps no traces for the backward: the backward recomputes an element's traces (cheap,
// in cache) instead of reading a whole batch's from memory.
// The rules are DEFINED in bpm_agents/plasticity.py; this restates that arithmetic (tests compare).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

extern "C" {
struct Args {
  int64_t B, T, H, nthreads, rule, fanout, act_tanh;
  double clip, eta, ee, bm;
  // inputs: drive (B,T,4H) = W_x x + b, gate order [i, f, g, o]; the state before the segment;
  // W (H,4H) fixed recurrent weights (row = pre-synaptic neuron); A (H,H) alpha
  void *drive, *h0, *c0, *hebb0, *elig0, *W, *A, *wm, *fv, *fu;
  // outputs: hs (B,T,H), the state after the last step
  void *hs, *cT, *hebbT, *eligT;
  // kept for the backward when save != 0 (else nullptr): gate activations (B,T,4H), c (B,T,H),
  // M (B,T), rates (B,T,H)
  int64_t save;
  void *acts, *cs, *Ms, *Rs;
  // backward: room for one element's recomputed traces per thread, nthreads * T * H*H * (one
  // byte for the clip mask + one Real for Hebb + one Real for E if retroactive)
  void *scratch;
  // backward inputs (nullptr: no gradient reached that output)
  void *g_hs, *g_cT, *g_hebbT, *g_eligT;
  // backward outputs: d loss / d gate pre-activations (B,T,4H) (= d loss / d drive), the state
  // before the segment (g_hebb0 / g_elig0 may be nullptr), alpha (nthreads,H,H, summed after),
  // rates (B,T,H), modulator pre-activation (B,T), eta_e (B)
  void *g_gates, *g_h0, *g_c0, *g_hebb0, *g_elig0, *g_A, *g_R, *g_a, *g_ee;
};
}

namespace {

enum { HEBBIAN = 1, SIMPLE = 2, RETRO = 3 };

template <typename R>
inline R sigmoid(R z) { return (R)1 / ((R)1 + std::exp(-z)); }

// fn(b, thread index, scratch) for every batch element: batch split over the threads round-robin,
// one scratch (made by make()) per thread
template <typename M, typename F>
void over_batch(int64_t B, int64_t nthreads, M make, F fn) {
  const int64_t n = std::max<int64_t>(1, std::min(nthreads, B));
  auto worker = [&](int64_t t) {
    auto scratch = make();
    for (int64_t b = t; b < B; b += n) fn(b, t, scratch);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < n; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (auto &th : pool) th.join();
}

// One row of the trace update (the rules of bpm_agents/plasticity.py):
//   hebbian / simple:  Hebb'_ij = clip(Hebb_ij + R_j s_i x_j)
//   retroactive:       Hebb'_ij = clip(Hebb_ij + R_j E_ij);  E'_ij = (1 - eta_e) E_ij + eta_e s_i x_j
// with s = h_{t-1}, x = g_t. Optionally the clip mask (1 where torch.clamp passes the gradient:
// -c <= z <= c) and the next step's plastic input pn_j += h_i alpha_ij Hebb'_ij. The forward and
// the backward's recomputation both go through here: one expression of the rule for both. Each
// element is read before it is written, so Ho == Hi and Eo == Ei (in place) are fine.
template <typename R, int RULE, bool MASK, bool PN>
inline void trace_row(const R *Hi, const R *Ei, R *Ho, R *Eo, uint8_t *Mi, R *pn, const R *Ai, R hi,
                      const R *rate, const R *x, R si, R c, R keep, R ee, int64_t H) {
  if (RULE == RETRO) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const R e = Ei[j], z = Hi[j] + rate[j] * e;
      const R hn = std::min(std::max(z, -c), c);
      Ho[j] = hn;
      if (MASK) Mi[j] = (uint8_t)((z >= -c) & (z <= c));
      Eo[j] = keep * e + ee * (si * x[j]);
      if (PN) pn[j] += hi * (Ai[j] * hn);
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const R z = Hi[j] + rate[j] * (si * x[j]);
      const R hn = std::min(std::max(z, -c), c);
      Ho[j] = hn;
      if (MASK) Mi[j] = (uint8_t)((z >= -c) & (z <= c));
      if (PN) pn[j] += hi * (Ai[j] * hn);
    }
  }
}

template <typename R>
struct Scratch {  // one per thread
  std::vector<R> v, hb, eb;  // hb, eb: the element's traces, updated in place step after step
  R *gates, *pl, *pn, *hprev, *cprev, *act, *c, *rate, *q, *gs, *gx, *gh, *ghn, *gc, *gpn;
  Scratch(int64_t H, bool traces) : v(24 * H), hb(traces ? H * H : 0), eb(traces ? H * H : 0) {
    R *p = v.data();
    for (R **f : {&gates, &act}) { *f = p; p += 4 * H; }
    for (R **f : {&pl, &pn, &hprev, &cprev, &c, &rate, &q, &gs, &gx, &gh, &ghn, &gc, &gpn}) { *f = p; p += H; }
  }
  Scratch(const Scratch &) = delete;  // the pointers point into v
};

// ---------------------------------------------------------------- forward, one batch element
// Per step: gates = drive + h_{t-1} W; g = tanh(. + plastic input); c, h; the modulator and the
// rates; then ONE pass over the element's traces (in place, in cache) that also gives, while the
// new Hebb is in registers, the next step's plastic input sum_i h_i alpha_ij Hebb'_ij.
template <typename R, int RULE, bool SAVE>
void forward_elem(const Args &a, int64_t b, Scratch<R> &w) {
  const int64_t T = a.T, H = a.H, HH = H * H, G = 4 * H;
  const R c_clip = (R)a.clip, ee = (R)a.ee, keep = (R)1 - ee;
  const R *W = (const R *)a.W, *A = (const R *)a.A;
  std::memcpy(w.hprev, (const R *)a.h0 + b * H, H * sizeof(R));
  std::memcpy(w.cprev, (const R *)a.c0 + b * H, H * sizeof(R));
  R *hebb = w.hb.data(), *elig = RULE == RETRO ? w.eb.data() : nullptr;
  std::memcpy(hebb, (const R *)a.hebb0 + b * HH, HH * sizeof(R));
  if (RULE == RETRO) std::memcpy(elig, (const R *)a.elig0 + b * HH, HH * sizeof(R));
  R *pl = w.pl, *pn = w.pn;
  for (int64_t j = 0; j < H; ++j) pl[j] = 0;  // the first step's plastic input
  for (int64_t i = 0; i < H; ++i) {
    const R hi = w.hprev[i];
    const R *Hi = hebb + i * H, *Ai = A + i * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) pl[j] += hi * (Ai[j] * Hi[j]);
  }
  for (int64_t t = 0; t < T; ++t) {
    const int64_t bt = b * T + t;
    R *gates = w.gates;
    std::memcpy(gates, (const R *)a.drive + bt * G, G * sizeof(R));
    int64_t i = 0;
    for (; i + 4 <= H; i += 4) {  // four rows per pass over the gates
      const R s0 = w.hprev[i], s1 = w.hprev[i + 1], s2 = w.hprev[i + 2], s3 = w.hprev[i + 3];
      const R *W0 = W + i * G, *W1 = W0 + G, *W2 = W1 + G, *W3 = W2 + G;
#pragma omp simd
      for (int64_t n = 0; n < G; ++n) gates[n] += (s0 * W0[n] + s1 * W1[n]) + (s2 * W2[n] + s3 * W3[n]);
    }
    for (; i < H; ++i) {
      const R si = w.hprev[i];
      const R *Wi = W + i * G;
#pragma omp simd
      for (int64_t n = 0; n < G; ++n) gates[n] += si * Wi[n];
    }
    R *act = SAVE ? (R *)a.acts + bt * G : w.act;
    R *c = SAVE ? (R *)a.cs + bt * H : w.c;
    R *h = (R *)a.hs + bt * H;
    R *ig = act, *fg = act + H, *gg = act + 2 * H, *og = act + 3 * H;
    for (int64_t j = 0; j < H; ++j) {
      ig[j] = sigmoid(gates[j]);
      fg[j] = sigmoid(gates[H + j]);
      gg[j] = std::tanh(gates[2 * H + j] + pl[j]);
      og[j] = sigmoid(gates[3 * H + j]);
      c[j] = fg[j] * w.cprev[j] + ig[j] * gg[j];
      h[j] = og[j] * std::tanh(c[j]);
    }
    R *rate = SAVE ? (R *)a.Rs + bt * H : w.rate;
    if (RULE == HEBBIAN) {
      for (int64_t j = 0; j < H; ++j) rate[j] = (R)a.eta;
    } else {  // modulator M = act(w_M . h + b_M), rates R_j = M (scalar) or v_j M + u_j (fan-out)
      const R *wm = (const R *)a.wm, *fv = (const R *)a.fv, *fu = (const R *)a.fu;
      R mod_in = 0;
      for (int64_t j = 0; j < H; ++j) mod_in += h[j] * wm[j];
      mod_in += (R)a.bm;
      const R m = a.act_tanh ? std::tanh(mod_in) : mod_in;
      if (SAVE) ((R *)a.Ms)[bt] = m;
      for (int64_t j = 0; j < H; ++j) rate[j] = a.fanout ? m * fv[j] + fu[j] : m;
    }
    for (int64_t j = 0; j < H; ++j) pn[j] = 0;
    for (int64_t i = 0; i < H; ++i) {
      R *Hi = hebb + i * H, *Ei = RULE == RETRO ? elig + i * H : nullptr;
      trace_row<R, RULE, false, true>(Hi, Ei, Hi, Ei, nullptr, pn, A + i * H, h[i], rate, gg, w.hprev[i],
                                      c_clip, keep, ee, H);
    }
    std::memcpy(w.hprev, h, H * sizeof(R));
    std::memcpy(w.cprev, c, H * sizeof(R));
    std::swap(pl, pn);
  }
  std::memcpy((R *)a.cT + b * H, w.cprev, H * sizeof(R));
  std::memcpy((R *)a.hebbT + b * HH, hebb, HH * sizeof(R));
  if (RULE == RETRO) std::memcpy((R *)a.eligT + b * HH, elig, HH * sizeof(R));
}

// ---------------------------------------------------------------- backward, one batch element
// First the element's traces after every step are recomputed from the segment's initial state
// and the kept rates and activities (into this thread's scratch, which stays in cache). Then the
// steps in reverse; the gradients of Hebb and E stay in two (H,H) buffers updated in place.
// Step t: (1) the trace update: ONE pass over the traces gives the gradients of Hebb_{t-1},
// E_{t-1}, alpha, the rates, h_{t-1} (pre), g_t (post) and h_t (next plastic input and the
// modulator); (2) the LSTM cell; (3) h_{t-1} through W. Gradients of the weights W, of the input
// drive and of the modulator and fan-out parameters are left to torch (they are sums over b, t).
template <typename R, int RULE>
void backward_elem(const Args &a, int64_t b, int64_t th, Scratch<R> &w, std::vector<R> &gbuf) {
  const int64_t T = a.T, H = a.H, HH = H * H, G = 4 * H;
  const R ee = (R)a.ee, keep = (R)1 - ee, c_clip = (R)a.clip;
  const R *W = (const R *)a.W, *A = (const R *)a.A;
  const bool elig = RULE == RETRO;
  R *gHebb = a.g_hebb0 ? (R *)a.g_hebb0 + b * HH : gbuf.data();
  R *gE = elig ? (a.g_elig0 ? (R *)a.g_elig0 + b * HH : gbuf.data() + HH) : nullptr;
  if (a.g_hebbT) std::memcpy(gHebb, (const R *)a.g_hebbT + b * HH, HH * sizeof(R));
  else std::fill(gHebb, gHebb + HH, (R)0);
  if (elig) {
    if (a.g_eligT) std::memcpy(gE, (const R *)a.g_eligT + b * HH, HH * sizeof(R));
    else std::fill(gE, gE + HH, (R)0);
  }
  R *gc = w.gc, *ghn = w.ghn, *gpn = w.gpn, *q = w.q, *gs = w.gs, *gx = w.gx, *gh = w.gh;
  for (int64_t j = 0; j < H; ++j) {
    gc[j] = a.g_cT ? ((const R *)a.g_cT)[b * H + j] : (R)0;
    ghn[j] = 0;  // d loss / d h_t from the steps after t
    gpn[j] = 0;  // d loss / d (plastic input of step t + 1)
  }
  R *gA = (R *)a.g_A + th * HH;
  R gee = 0;
  // recompute: TH[t] = Hebb after step t, TE[t] = E after step t, TM[t] = the clip mask of step t
  const int64_t per_thread = T * HH * ((int64_t)sizeof(R) * (elig ? 2 : 1) + 1);
  char *room = (char *)a.scratch + th * per_thread;
  R *TH = (R *)room, *TE = elig ? TH + T * HH : nullptr;
  uint8_t *TM = (uint8_t *)(room + T * HH * (int64_t)sizeof(R) * (elig ? 2 : 1));
  {
    const R *hp = (const R *)a.hebb0 + b * HH, *ep = elig ? (const R *)a.elig0 + b * HH : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t bt = b * T + t;
      const R *s = t ? (const R *)a.hs + (bt - 1) * H : (const R *)a.h0 + b * H;
      const R *rate = (const R *)a.Rs + bt * H, *x = (const R *)a.acts + bt * G + 2 * H;
      R *Ho = TH + t * HH, *Eo = elig ? TE + t * HH : nullptr;
      for (int64_t i = 0; i < H; ++i)
        trace_row<R, RULE, true, false>(hp + i * H, elig ? ep + i * H : nullptr, Ho + i * H,
                                        elig ? Eo + i * H : nullptr, TM + t * HH + i * H, nullptr, nullptr,
                                        (R)0, rate, x, s[i], c_clip, keep, ee, H);
      hp = Ho;
      ep = Eo;
    }
  }
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t bt = b * T + t;
    const R *s = t ? (const R *)a.hs + (bt - 1) * H : (const R *)a.h0 + b * H;
    const R *cprev = t ? (const R *)a.cs + (bt - 1) * H : (const R *)a.c0 + b * H;
    const R *act = (const R *)a.acts + bt * G;
    const R *ig = act, *fg = act + H, *gg = act + 2 * H, *og = act + 3 * H;
    const R *c = (const R *)a.cs + bt * H, *h = (const R *)a.hs + bt * H;
    const R *rate = (const R *)a.Rs + bt * H, *x = gg;
    const R *Hn = TH + t * HH;
    const uint8_t *mk = TM + t * HH;
    const R *Ep = elig ? (t ? TE + (t - 1) * HH : (const R *)a.elig0 + b * HH) : nullptr;
    R *gR = (R *)a.g_R + bt * H;
    // (1) the trace update of step t
    for (int64_t j = 0; j < H; ++j) q[j] = gR[j] = 0;
    for (int64_t i = 0; i < H; ++i) {
      const R si = s[i], hi = h[i];
      const R *Hni = Hn + i * H, *Ai = A + i * H;
      const uint8_t *Mi = mk + i * H;
      R *gHi = gHebb + i * H, *gAi = gA + i * H;
      R rs = 0, re = 0, rh = 0;
#pragma omp simd reduction(+ : rh)
      for (int64_t j = 0; j < H; ++j) {  // alpha and h_t through the next plastic input
        rh += (Ai[j] * Hni[j]) * gpn[j];
        gAi[j] += Hni[j] * (hi * gpn[j]);
      }
      if (RULE == RETRO) {
        const R *Ei = Ep + i * H;
        R *gEi = gE + i * H;
#pragma omp simd reduction(+ : rs, re)
        for (int64_t j = 0; j < H; ++j) {
          const R e = Ei[j];
          const R gz = Mi[j] ? gHi[j] + Ai[j] * (hi * gpn[j]) : (R)0;
          const R gn = gEi[j];
          gHi[j] = gz;
          gEi[j] = rate[j] * gz + keep * gn;
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
          gHi[j] = gz;
          q[j] += gz * si;
          rs += gz * (rate[j] * x[j]);
        }
        gs[i] = rs;
      }
      gh[i] = rh;
    }
    if (RULE == RETRO) {
      for (int64_t j = 0; j < H; ++j) gx[j] = ee * q[j];
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
      const R m = ((const R *)a.Ms)[bt];
      const R ga = a.act_tanh ? gm * ((R)1 - m * m) : gm;
      for (int64_t j = 0; j < H; ++j) gh[j] += ga * wm[j];
      ((R *)a.g_a)[bt] = ga;
    }
    // (2) the LSTM cell: h = o tanh(c), c = f c_{t-1} + i g
    R *dg = (R *)a.g_gates + bt * G;
    const R *ghs = a.g_hs ? (const R *)a.g_hs + bt * H : nullptr;
    for (int64_t j = 0; j < H; ++j) {
      const R ghj = (ghs ? ghs[j] : (R)0) + ghn[j] + gh[j];
      const R tc = std::tanh(c[j]);
      const R gct = gc[j] + ghj * og[j] * ((R)1 - tc * tc);
      dg[j] = gct * gg[j] * ig[j] * ((R)1 - ig[j]);
      dg[H + j] = gct * cprev[j] * fg[j] * ((R)1 - fg[j]);
      const R dgg = (gct * ig[j] + gx[j]) * ((R)1 - gg[j] * gg[j]);
      dg[2 * H + j] = dgg;
      dg[3 * H + j] = ghj * tc * og[j] * ((R)1 - og[j]);
      gc[j] = gct * fg[j];
      gpn[j] = dgg;  // the plastic input adds to g's pre-activation
    }
    // (3) h_{t-1}: through W and through the trace update (pre); four rows at a time, so four
    // independent sums are in flight
    int64_t i = 0;
    for (; i + 4 <= H; i += 4) {
      const R *W0 = W + i * G, *W1 = W0 + G, *W2 = W1 + G, *W3 = W2 + G;
      R r0 = 0, r1 = 0, r2 = 0, r3 = 0;
#pragma omp simd reduction(+ : r0, r1, r2, r3)
      for (int64_t n = 0; n < G; ++n) {
        const R d = dg[n];
        r0 += W0[n] * d;
        r1 += W1[n] * d;
        r2 += W2[n] * d;
        r3 += W3[n] * d;
      }
      ghn[i] = r0 + gs[i];
      ghn[i + 1] = r1 + gs[i + 1];
      ghn[i + 2] = r2 + gs[i + 2];
      ghn[i + 3] = r3 + gs[i + 3];
    }
    for (; i < H; ++i) {
      const R *Wi = W + i * G;
      R r = 0;
#pragma omp simd reduction(+ : r)
      for (int64_t n = 0; n < G; ++n) r += Wi[n] * dg[n];
      ghn[i] = r + gs[i];
    }
  }
  // the first step's plastic input sum_i h0_i alpha_ij Hebb0_ij
  const R *h0 = (const R *)a.h0 + b * H, *hebb0 = (const R *)a.hebb0 + b * HH;
  for (int64_t i = 0; i < H; ++i) {
    const R hi = h0[i];
    const R *Hi = hebb0 + i * H, *Ai = A + i * H;
    R *gHi = gHebb + i * H, *gAi = gA + i * H;
    R rh = 0;
#pragma omp simd reduction(+ : rh)
    for (int64_t j = 0; j < H; ++j) {
      rh += (Ai[j] * Hi[j]) * gpn[j];
      gAi[j] += Hi[j] * (hi * gpn[j]);
      gHi[j] += Ai[j] * (hi * gpn[j]);
    }
    ghn[i] += rh;
  }
  std::memcpy((R *)a.g_h0 + b * H, ghn, H * sizeof(R));
  std::memcpy((R *)a.g_c0 + b * H, gc, H * sizeof(R));
  if (elig) ((R *)a.g_ee)[b] = gee;
}

template <typename R>
void forward(const Args &a) {
  over_batch(
      a.B, a.nthreads, [&] { return Scratch<R>(a.H, true); },
      [&](int64_t b, int64_t, Scratch<R> &w) {
        switch (a.rule * 2 + (a.save ? 1 : 0)) {
          case 2 * HEBBIAN: forward_elem<R, HEBBIAN, false>(a, b, w); break;
          case 2 * HEBBIAN + 1: forward_elem<R, HEBBIAN, true>(a, b, w); break;
          case 2 * SIMPLE: forward_elem<R, SIMPLE, false>(a, b, w); break;
          case 2 * SIMPLE + 1: forward_elem<R, SIMPLE, true>(a, b, w); break;
          case 2 * RETRO: forward_elem<R, RETRO, false>(a, b, w); break;
          default: forward_elem<R, RETRO, true>(a, b, w); break;
        }
      });
}

template <typename R>
struct BackScratch {
  Scratch<R> w;
  std::vector<R> gbuf;  // the trace gradients when the caller keeps none
  explicit BackScratch(int64_t H) : w(H, false), gbuf(2 * H * H) {}
};

template <typename R>
void backward(const Args &a) {
  over_batch(
      a.B, a.nthreads, [&] { return BackScratch<R>(a.H); },
      [&](int64_t b, int64_t t, BackScratch<R> &s) {
        switch (a.rule) {
          case HEBBIAN: backward_elem<R, HEBBIAN>(a, b, t, s.w, s.gbuf); break;
          case SIMPLE: backward_elem<R, SIMPLE>(a, b, t, s.w, s.gbuf); break;
          default: backward_elem<R, RETRO>(a, b, t, s.w, s.gbuf); break;
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
void bpm_lstm_segment_forward(const Args *a) { forward<Real>(*a); }
void bpm_lstm_segment_backward(const Args *a) { backward<Real>(*a); }
}
"""
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
    getattr(libs[tensors["drive"].dtype], name)(ctypes.byref(args))


# The backward's room for recomputed traces (one element per thread at a time, a few MB for the
# small PTB model), kept between calls: a fresh buffer of that size would page-fault on every call.
_SCRATCH: dict[int, Tensor] = {}
_MAX_SCRATCH = 4


def _scratch(nbytes: int) -> Tensor:
    """A byte buffer of ``nbytes``, taken out of the cache (a concurrent call makes its own)."""
    buf = _SCRATCH.pop(nbytes, None)
    return buf if buf is not None else torch.empty(nbytes, dtype=torch.uint8)


def _run_forward(
    meta: dict, inputs: dict[str, Tensor | None], save: bool
) -> tuple[dict[str, Tensor | None], dict[str, Tensor | None]]:
    """Outputs (hs, cT, hebbT, eligT) and, when ``save``, what the backward needs (no traces: the
    backward recomputes them)."""
    B, T, H = meta["B"], meta["T"], meta["H"]
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
    def forward(ctx, meta, drive, h0, c0, hebb0, elig0, W, A, eta, ee, wm, bm, fv, fu):  # type: ignore[override]
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
    def backward(ctx, g_hs, g_cT, g_hebbT, g_eligT):  # type: ignore[override]
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
        scratch = _scratch(nbytes)
        tensors = dict(drive=hs, h0=h0, c0=c0, hebb0=hebb0, elig0=elig0 if elig else None, W=W, A=A, wm=wm,
                       fv=fv, fu=fu, hs=hs, **saved, scratch=scratch, **grads)  # fmt: skip
        _call("bpm_lstm_segment_backward", {**meta, "save": 1}, tensors)
        _SCRATCH[nbytes] = scratch
        while len(_SCRATCH) > _MAX_SCRATCH:  # sizes no longer in use (e.g. a short last segment) go
            del _SCRATCH[next(iter(_SCRATCH))]
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


def sequence(cell: PlasticLSTMCell, drive: Tensor, state: LSTMState) -> tuple[Tensor, tuple[Tensor, ...]]:
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
