"""Fast whole-sequence unroll of :class:`~bpm_agents.networks.PlasticRNN` on CPU.

The reference (:meth:`PlasticRNN.reference_unroll`) runs the rules of
:mod:`bpm_agents.plasticity` one step at a time with plain autograd, which writes about nine
(B, N, N) tensors per step and keeps them all for the backward pass. Here the whole episode is one
``torch.autograd.Function`` whose forward and hand-written backward are a small C++ kernel
(compiled with the system C++ compiler at first use, cached on disk, loaded with ctypes; no
PyTorch headers, so the build takes seconds, once per machine):

* each batch element is processed by one thread for the whole sequence, so its (N, N) traces stay
  in the core's cache; a forward step is one pass over the (N, N) arrays (trace update fused with
  the next step's drive), a backward step one pass (the drive of step t fused with the clipped
  trace update of step t-1) plus a replay pass; rows are padded to a multiple of 16 so the
  vector loops have no scalar remainder;
* the backward keeps only the traces at every ``k``-th step (a checkpoint) plus the small
  (B, T, N) sequences (pre, x, M); within a segment it replays the trace updates (the activities
  are known, so only the cheap trace update is recomputed) and then walks back through it.

The arithmetic restates the rules of :mod:`bpm_agents.plasticity` (that module is the
definition; the tests compare this path with it for every rule and option):

    drive_j = (W_in u + b)_j + sum_i s_i (w_ij + alpha_ij H_ij),   x = tanh(drive),   s = x(t-1)
    hebbian:      H <- clip(H + eta * s_i x_j)
    simple:       H <- clip(H + R_j * s_i x_j)
    retroactive:  H <- clip(H + R_j * E_ij);  E <- (1 - eta_e) E + eta_e * s_i x_j
    R_j = M (scalar modulation) or v_j M + u_j (fan-out),  M = act(w_M . x + b_M)

Only the sums are ordered differently from the reference, so results agree to rounding.

Supported: CPU tensors of dtype float32 or float64, every rule and option of
:class:`~bpm_agents.plasticity.PlasticityConfig`, ``episode_starts``, gradients w.r.t. every
parameter of the network, the inputs and the initial state (first-order only: no double
backward). Elsewhere (CUDA, other dtypes, no C++ compiler) :func:`supports` is False and
``PlasticRNN.unroll(impl="auto")`` uses the reference; so does the rule ``none``, where the
reference is faster. ``BPM_DISABLE_FAST_UNROLL=1`` turns the kernel off; ``BPM_KERNEL_CACHE``
moves the build cache (default ``~/.cache/backpropamine-gym``); ``BPM_KERNEL_CFLAGS`` adds
compiler flags.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bpm_agents.kernel_build import CppKernel
from bpm_agents.plasticity import PlasticState

if TYPE_CHECKING:  # pragma: no cover
    from bpm_agents.networks import PlasticRNN

__all__ = ["supports", "unsupported_reason", "unroll", "kernel_available", "CHECKPOINT_EVERY"]

#: steps between stored trace checkpoints in the backward pass (memory ~ B * T / k * N^2)
CHECKPOINT_EVERY = 16

_RULE_CODES = {"none": 0, "hebbian": 1, "simple": 2, "retroactive": 3}

_SOURCE = r"""
// Fused forward/backward of the plastic RNN sequence. The rules are DEFINED in
// bpm_agents/plasticity.py; this file restates that arithmetic (tests compare both).
// One thread owns one batch element for the whole sequence, so its traces stay in cache.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

extern "C" {
struct Args {
  int64_t B, T, N, k, nthreads;
  int64_t rule, fanout, act_tanh, save;
  double clip, eta, ee, bm;
  void *drive_in, *starts, *h0, *H, *E, *w, *A, *wm, *fv, *fu;
  void *x, *pre, *m, *ckH, *ckE;
  void *gx, *gm, *gdrive, *da, *dR, *dA, *dee, *gh, *gH, *gE;
  void *H0, *E0;  // forward: initial traces (read); H, E receive the final ones
};
}

namespace {

enum { NONE = 0, HEBBIAN = 1, SIMPLE = 2, RETRO = 3 };

// fn(b, scratch) for every batch element; each thread owns one uninitialised scratch buffer
template <typename R, typename F>
void parallel_over_batch(int64_t B, int64_t nthreads, size_t scratch_size, F fn) {
  std::atomic<int64_t> next(0);
  auto worker = [&]() {
    std::unique_ptr<R[]> scratch(scratch_size ? new R[scratch_size] : nullptr);
    for (int64_t b = next++; b < B; b = next++) fn(b, scratch.get());
  };
  int64_t n = std::max<int64_t>(1, std::min(nthreads, B));
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < n; ++t) pool.emplace_back(worker);
  worker();
  for (auto &th : pool) th.join();
}

// Rows of every N x N array are padded to P = N rounded up to 16 (zeros in the pad, which stay
// zero through every update), so the vector loops below have no scalar remainder.
inline int64_t padded(int64_t N) { return (N + 15) / 16 * 16; }

template <typename R>
void pad_rows(const R *src, R *dst, int64_t N, int64_t P) {  // (N, N) -> (N, P), zero pad
  for (int64_t i = 0; i < N; ++i) {
    std::memcpy(dst + i * P, src + i * N, N * sizeof(R));
    std::fill(dst + i * P + N, dst + (i + 1) * P, (R)0);
  }
}

template <typename R>
void unpad_rows(const R *src, R *dst, int64_t N, int64_t P) {
  for (int64_t i = 0; i < N; ++i) std::memcpy(dst + i * N, src + i * P, N * sizeof(R));
}

// rate R_j of one step (eta, M, or v_j M + u_j) and R_j x_j; entries j >= N stay untouched (0)
template <typename R>
void rates(const Args &a, R m, const R *x, R *rate, R *rx) {
  const R *fv = (const R *)a.fv, *fu = (const R *)a.fu;
  for (int64_t j = 0; j < a.N; ++j) {
    R r = a.rule == HEBBIAN ? (R)a.eta : (a.fanout ? m * fv[j] + fu[j] : m);
    rate[j] = r;
    rx[j] = r * x[j];
  }
}

// drive_j += sum_i s_i (w_ij + A_ij H_ij)   (H == nullptr: rule none)
template <typename R>
void drive_pass(int64_t N, int64_t P, const R *s, const R *w, const R *A, const R *H, R *drive) {
  for (int64_t i = 0; i < N; ++i) {
    const R si = s[i];
    const R *wi = w + i * P;
    if (H) {
      const R *Ai = A + i * P, *Hi = H + i * P;
#pragma omp simd
      for (int64_t j = 0; j < P; ++j) drive[j] += si * (wi[j] + Ai[j] * Hi[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < P; ++j) drive[j] += si * wi[j];
    }
  }
}

// One trace update (pre s, post x): Hi/Ei -> Ho/Eo (may alias). MASK: record where the clip let
// the gradient through (torch.clamp: min <= z <= max). DRIVE: also accumulate the next step's
// drive, sum_i x_i (w_ij + A_ij Hnew_ij), while Hnew is in registers.
template <typename R, int RULE, bool MASK, bool DRIVE>
void update_pass(int64_t N, int64_t P, R c, R ee, const R *Hi_, const R *Ei_, R *Ho_, R *Eo_,
                 R *msk, const R *s, const R *x, const R *rate, const R *rx, const R *w,
                 const R *A, R *drive) {
  const R keep = (R)1 - ee;
  for (int64_t i = 0; i < N; ++i) {
    const R *Hi = Hi_ + i * P;
    R *Ho = Ho_ + i * P;
    const R *Ei = RULE == RETRO ? Ei_ + i * P : nullptr;
    R *Eo = RULE == RETRO ? Eo_ + i * P : nullptr;
    R *mi = MASK ? msk + i * P : nullptr;
    const R *wi = w + i * P, *Ai = A + i * P;
    const R si = s[i], xi = x[i];
#pragma omp simd
    for (int64_t j = 0; j < P; ++j) {
      R z;
      if (RULE == RETRO) {
        const R e = Ei[j];
        z = Hi[j] + rate[j] * e;
        Eo[j] = keep * e + ee * (si * x[j]);
      } else {
        z = Hi[j] + si * rx[j];
      }
      const R h = std::min(std::max(z, -c), c);
      Ho[j] = h;
      if (MASK) mi[j] = (z >= -c && z <= c) ? (R)1 : (R)0;
      if (DRIVE) drive[j] += xi * (wi[j] + Ai[j] * h);
    }
  }
}

template <typename R>
size_t forward_scratch_size(const Args &a) {
  const size_t NP = a.N * padded(a.N);
  return a.rule == NONE ? 0 : NP * (a.rule == RETRO ? 2 : 1);
}

template <typename R, int RULE>
void forward_one(const Args &a, int64_t b, const R *w, const R *A, R *scratch) {
  const int64_t T = a.T, N = a.N, P = padded(N), NN = N * N, NP = N * P, k = a.k;
  const int64_t nck = (T + k - 1) / k;
  constexpr bool plastic = RULE != NONE, modulated = RULE >= SIMPLE, elig = RULE == RETRO;
  const R c = (R)a.clip, ee = (R)a.ee;
  const R *wm = (const R *)a.wm;
  const uint8_t *st = a.starts ? (const uint8_t *)a.starts + b * T : nullptr;
  std::vector<R> s(P, (R)0), drive(P, (R)0), rate(P, (R)0), rx(P, (R)0), x(P, (R)0);
  R *H = plastic ? scratch : nullptr;
  R *E = elig ? scratch + NP : nullptr;
  if (plastic) pad_rows((const R *)a.H0 + b * NN, H, N, P);
  if (elig) pad_rows((const R *)a.E0 + b * NN, E, N, P);
  const R *din = (const R *)a.drive_in + b * T * N;
  R *xs = (R *)a.x + b * T * N;
  auto checkpoint = [&](int64_t t) {
    if (!a.save) return;
    if (plastic) std::memcpy((R *)a.ckH + (b * nck + t / k) * NP, H, NP * sizeof(R));
    if (elig) std::memcpy((R *)a.ckE + (b * nck + t / k) * NP, E, NP * sizeof(R));
  };
  auto reset = [&]() {
    std::fill(s.begin(), s.end(), (R)0);
    if (plastic) std::fill(H, H + NP, (R)0);
    if (elig) std::fill(E, E + NP, (R)0);
  };
  std::memcpy(s.data(), (const R *)a.h0 + b * N, N * sizeof(R));
  checkpoint(0);
  if (st && st[0]) reset();
  std::memcpy(drive.data(), din, N * sizeof(R));
  drive_pass<R>(N, P, s.data(), w, A, H, drive.data());
  for (int64_t t = 0; t < T; ++t) {
    if (a.save) std::memcpy((R *)a.pre + (b * T + t) * N, s.data(), N * sizeof(R));
    for (int64_t j = 0; j < N; ++j) x[j] = std::tanh(drive[j]);
    std::memcpy(xs + t * N, x.data(), N * sizeof(R));
    R m = 0;
    if (modulated) {
      R acc = (R)a.bm;
      for (int64_t j = 0; j < N; ++j) acc += wm[j] * x[j];
      m = a.act_tanh ? std::tanh(acc) : acc;
      ((R *)a.m)[b * T + t] = m;
    }
    const bool has_next = t + 1 < T, reset_next = has_next && st && st[t + 1];
    if (has_next) std::memcpy(drive.data(), din + (t + 1) * N, N * sizeof(R));
    if (plastic) {
      rates<R>(a, m, x.data(), rate.data(), rx.data());
      if (has_next && !reset_next)
        update_pass<R, RULE, false, true>(N, P, c, ee, H, E, H, E, nullptr, s.data(), x.data(),
                                          rate.data(), rx.data(), w, A, drive.data());
      else
        update_pass<R, RULE, false, false>(N, P, c, ee, H, E, H, E, nullptr, s.data(), x.data(),
                                           rate.data(), rx.data(), w, A, nullptr);
    } else if (has_next && !reset_next) {
      drive_pass<R>(N, P, x.data(), w, A, nullptr, drive.data());
    }
    if (has_next && (t + 1) % k == 0) checkpoint(t + 1);
    if (reset_next) reset();
    else std::memcpy(s.data(), x.data(), N * sizeof(R));
  }
  if (plastic) unpad_rows(H, (R *)a.H + b * NN, N, P);
  if (elig) unpad_rows(E, (R *)a.E + b * NN, N, P);
}

// Backward pass over the N x N arrays of one step, in two halves that may be fused:
//  B-part (step t): through drive_t = s_t (w + A H_{t-1}); gH += A s dd, dA += H s dd,
//                   rowB = (w + A H) dd; then the reset of step t (kp = 0 where it zeroed the state).
//  A-part (step u = t - 1, or t alone): through the clipped trace update of step u.
template <typename R, int RULE, bool DO_B, bool DO_A>
void backward_pass(int64_t N, int64_t P, R ee, const R *w, const R *A, const R *Hp, const R *s,
                   const R *dd, R kp, R *gH, R *dA, R *rowB, R kpE, const R *msk,
                   const R *Ep, const R *s2, const R *x2, const R *rate2, const R *rx2, R *gE,
                   R *col, R *dRv, R *rowA, R &dee) {
  const R keep = (R)1 - ee;
  for (int64_t i = 0; i < N; ++i) {
    R *gHi = gH + i * P;
    const R *wi = w + i * P, *Ai = A + i * P;
    const R *Hi = DO_B ? Hp + i * P : nullptr;
    R *dAi = DO_B ? dA + i * P : nullptr;
    const R *mi = DO_A ? msk + i * P : nullptr;
    const R *Ei = (DO_A && RULE == RETRO) ? Ep + i * P : nullptr;
    R *gEi = (DO_A && RULE == RETRO) ? gE + i * P : nullptr;
    const R si = DO_B ? s[i] : (R)0, s2i = DO_A ? s2[i] : (R)0;
    R accB = 0, accA = 0, accD = 0;
#pragma omp simd reduction(+ : accB, accA, accD)
    for (int64_t j = 0; j < P; ++j) {
      R g1 = gHi[j];
      if (DO_B) {
        const R sd = si * dd[j], h = Hi[j], al = Ai[j];
        accB += (wi[j] + al * h) * dd[j];
        dAi[j] += h * sd;
        g1 = (g1 + al * sd) * kp;
      }
      if (DO_A) {
        const R g = mi[j] != (R)0 ? g1 : (R)0;
        if (RULE == RETRO) {
          const R ge = gEi[j] * kpE, e = Ei[j];
          dRv[j] += g * e;
          accD += ge * (s2i * x2[j] - e);
          accA += ge * x2[j];
          col[j] += s2i * ge;
          gEi[j] = keep * ge + rate2[j] * g;
        } else {
          col[j] += s2i * g;
          accA += g * rx2[j];
        }
        gHi[j] = g;
      } else {
        gHi[j] = g1;
      }
    }
    if (DO_B) rowB[i] = accB;
    if (DO_A) {
      rowA[i] = RULE == RETRO ? ee * accA : accA;
      dee += accD;
    }
  }
}

template <typename R>
void backward_none_pass(int64_t N, int64_t P, const R *w, const R *dd, R *rowB) {
  for (int64_t i = 0; i < N; ++i) {
    const R *wi = w + i * P;
    R acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < P; ++j) acc += wi[j] * dd[j];
    rowB[i] = acc;
  }
}

template <typename R>
size_t backward_scratch_size(const Args &a) {
  const size_t NP = a.N * padded(a.N), k = a.k;
  if (a.rule == NONE) return 0;
  const size_t traces = a.rule == RETRO ? 2 : 1;
  // gH, dA (and gE); traces of k + 1 steps; k clip masks
  return (1 + traces) * NP + (k + 1) * NP * traces + k * NP;
}

template <typename R, int RULE>
void backward_one(const Args &a, int64_t b, const R *w, const R *A, R *scratch) {
  const int64_t T = a.T, N = a.N, P = padded(N), NN = N * N, NP = N * P, k = a.k;
  const int64_t nck = (T + k - 1) / k;
  constexpr bool plastic = RULE != NONE, modulated = RULE >= SIMPLE, elig = RULE == RETRO;
  const R c = (R)a.clip, ee = (R)a.ee;
  const R *wm = (const R *)a.wm, *fv = (const R *)a.fv;
  const uint8_t *st = a.starts ? (const uint8_t *)a.starts + b * T : nullptr;
  const R *xs = (const R *)a.x + b * T * N, *pres = (const R *)a.pre + b * T * N;
  const R *ms = modulated ? (const R *)a.m + b * T : nullptr;
  const R *gxo = (const R *)a.gx + b * T * N;
  const R *gmo = (modulated && a.gm) ? (const R *)a.gm + b * T : nullptr;
  R *gdrive = (R *)a.gdrive + b * T * N;
  R *gH = scratch, *dA = scratch + NP, *gE = elig ? scratch + 2 * NP : nullptr;
  R *const Hs = plastic ? scratch + (elig ? 3 : 2) * NP : nullptr;
  R *const Es = elig ? Hs + (k + 1) * NP : nullptr;
  R *const Ms = plastic ? Hs + (k + 1) * NP * (elig ? 2 : 1) : nullptr;
  if (plastic) {
    pad_rows((const R *)a.gH + b * NN, gH, N, P);
    std::fill(dA, dA + NP, (R)0);
  }
  if (elig) pad_rows((const R *)a.gE + b * NN, gE, N, P);
  std::vector<R> gs(P, (R)0), dd(P, (R)0), rowB(P, (R)0), rowA(P, (R)0), rowA2(P, (R)0);
  std::vector<R> col(P, (R)0), dRv(P, (R)0), gxA(P, (R)0), rate(P, (R)0), rx(P, (R)0);
  std::vector<R> rate2(P, (R)0), rx2(P, (R)0), xp(P, (R)0), x2p(P, (R)0);
  int64_t cur_seg = -1;
  R dee = 0;
  auto reset_at = [&](int64_t t) -> bool { return st && st[t]; };
  // replay a segment from its checkpoint: slot u = the traces step t0 + u reads (after its reset)
  auto replay = [&](int64_t seg) {
    const int64_t t0 = seg * k, t1 = std::min(T, t0 + k);
    std::memcpy(Hs, (const R *)a.ckH + (b * nck + seg) * NP, NP * sizeof(R));
    if (elig) std::memcpy(Es, (const R *)a.ckE + (b * nck + seg) * NP, NP * sizeof(R));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t u = t - t0;
      R *Hu = Hs + u * NP, *Eu = elig ? Es + u * NP : nullptr;
      if (reset_at(t)) {
        std::fill(Hu, Hu + NP, (R)0);
        if (elig) std::fill(Eu, Eu + NP, (R)0);
      }
      std::memcpy(xp.data(), xs + t * N, N * sizeof(R));
      rates<R>(a, modulated ? ms[t] : (R)0, xp.data(), rate.data(), rx.data());
      update_pass<R, RULE, true, false>(N, P, c, ee, Hu, Eu, Hu + NP, elig ? Eu + NP : nullptr,
                                        Ms + u * NP, pres + t * N, xp.data(), rate.data(),
                                        rx.data(), w, A, nullptr);
    }
    cur_seg = seg;
  };
  auto slot = [&](int64_t t) { return t - cur_seg * k; };
  // after the A-part of step t: gradients of its rate, M, and the drive; fills dd
  auto finish_step = [&](int64_t t) {
    const R *x = xs + t * N;
    R dpre = 0;
    if (plastic) {
      const R *rt = rate2.data();
      if (RULE == RETRO) {
        for (int64_t j = 0; j < N; ++j) gxA[j] = ee * col[j];
      } else {
        for (int64_t j = 0; j < N; ++j) {
          gxA[j] = rt[j] * col[j];
          dRv[j] = x[j] * col[j];
        }
      }
      if (RULE == HEBBIAN || !a.fanout) {
        R tot = 0;
        for (int64_t j = 0; j < N; ++j) tot += dRv[j];
        ((R *)a.dR)[b * T + t] = tot;
        if (modulated) {
          const R dm = tot + (gmo ? gmo[t] : (R)0), m = ms[t];
          dpre = a.act_tanh ? dm * ((R)1 - m * m) : dm;
        }
      } else {
        R dm = gmo ? gmo[t] : (R)0;
        R *dRo = (R *)a.dR + (b * T + t) * N;
        for (int64_t j = 0; j < N; ++j) {
          dRo[j] = dRv[j];
          dm += dRv[j] * fv[j];
        }
        const R m = ms[t];
        dpre = a.act_tanh ? dm * ((R)1 - m * m) : dm;
      }
      if (modulated) ((R *)a.da)[b * T + t] = dpre;
    }
    for (int64_t j = 0; j < N; ++j) {
      R g = gxo[t * N + j] + gs[j];
      if (plastic) g += gxA[j];
      if (modulated) g += dpre * wm[j];
      dd[j] = g * ((R)1 - x[j] * x[j]);
    }
    std::memcpy(gdrive + t * N, dd.data(), N * sizeof(R));
  };
  // inputs of the A-part of step u: its rates and x (padded), zeroed accumulators
  auto prepare_a = [&](int64_t u) {
    std::memcpy(x2p.data(), xs + u * N, N * sizeof(R));
    rates<R>(a, modulated ? ms[u] : (R)0, x2p.data(), rate2.data(), rx2.data());
    std::fill(col.begin(), col.end(), (R)0);
    std::fill(dRv.begin(), dRv.end(), (R)0);
  };
  auto a_only = [&](int64_t u) {
    prepare_a(u);
    backward_pass<R, RULE, false, true>(
        N, P, ee, w, A, nullptr, nullptr, nullptr, (R)1, gH, nullptr, nullptr, (R)1,
        Ms + slot(u) * NP, elig ? Es + slot(u) * NP : nullptr, pres + u * N, x2p.data(),
        rate2.data(), rx2.data(), gE, col.data(), dRv.data(), rowA.data(), dee);
  };

  if (plastic) {
    replay(nck - 1);
    a_only(T - 1);
  }
  finish_step(T - 1);  // gs = 0: the final hidden is x[T-1], its grad is already in gxo
  for (int64_t t = T - 1; t >= 0; --t) {
    const R kp = reset_at(t) ? (R)0 : (R)1;
    const R *s = pres + t * N;
    std::swap(rowA, rowA2);  // rowA2: gradient of s_t through the trace update of step t
    if (!plastic) {
      backward_none_pass<R>(N, P, w, dd.data(), rowB.data());
    } else if (t > 0 && (t - 1) / k == cur_seg) {
      const int64_t u = t - 1;
      prepare_a(u);
      backward_pass<R, RULE, true, true>(
          N, P, ee, w, A, Hs + slot(t) * NP, s, dd.data(), kp, gH, dA, rowB.data(), kp,
          Ms + slot(u) * NP, elig ? Es + slot(u) * NP : nullptr, pres + u * N, x2p.data(),
          rate2.data(), rx2.data(), gE, col.data(), dRv.data(), rowA.data(), dee);
    } else {
      backward_pass<R, RULE, true, false>(N, P, ee, w, A, Hs + slot(t) * NP, s, dd.data(), kp, gH,
                                          dA, rowB.data(), (R)1, nullptr, nullptr, nullptr,
                                          nullptr, nullptr, nullptr, gE, nullptr, nullptr,
                                          nullptr, dee);
      if (elig && kp == (R)0) std::fill(gE, gE + NP, (R)0);
      if (t > 0) {
        replay((t - 1) / k);
        a_only(t - 1);
      }
    }
    for (int64_t i = 0; i < N; ++i) gs[i] = (rowB[i] + (plastic ? rowA2[i] : (R)0)) * kp;
    if (t > 0) finish_step(t - 1);
  }
  std::memcpy((R *)a.gh + b * N, gs.data(), N * sizeof(R));
  if (plastic) {
    unpad_rows(gH, (R *)a.gH + b * NN, N, P);
    unpad_rows(dA, (R *)a.dA + b * NN, N, P);
  }
  if (elig) {
    unpad_rows(gE, (R *)a.gE + b * NN, N, P);
    ((R *)a.dee)[b] = dee;
  }
}

// w and A with padded rows, shared read-only by all threads
template <typename R>
struct Weights {
  std::vector<R> w, A;
  explicit Weights(const Args &a) : w(a.N * padded(a.N)), A(a.rule == NONE ? 0 : a.N * padded(a.N)) {
    pad_rows((const R *)a.w, w.data(), a.N, padded(a.N));
    if (a.rule != NONE) pad_rows((const R *)a.A, A.data(), a.N, padded(a.N));
  }
};

template <typename R>
void forward(const Args &a) {
  Weights<R> W(a);
  const R *w = W.w.data(), *A = W.A.data();
  parallel_over_batch<R>(a.B, a.nthreads, forward_scratch_size<R>(a), [&](int64_t b, R *sc) {
    switch (a.rule) {
      case NONE: forward_one<R, NONE>(a, b, w, A, sc); break;
      case HEBBIAN: forward_one<R, HEBBIAN>(a, b, w, A, sc); break;
      case SIMPLE: forward_one<R, SIMPLE>(a, b, w, A, sc); break;
      default: forward_one<R, RETRO>(a, b, w, A, sc); break;
    }
  });
}

template <typename R>
void backward(const Args &a) {
  Weights<R> W(a);
  const R *w = W.w.data(), *A = W.A.data();
  parallel_over_batch<R>(a.B, a.nthreads, backward_scratch_size<R>(a), [&](int64_t b, R *sc) {
    switch (a.rule) {
      case NONE: backward_one<R, NONE>(a, b, w, A, sc); break;
      case HEBBIAN: backward_one<R, HEBBIAN>(a, b, w, A, sc); break;
      case SIMPLE: backward_one<R, SIMPLE>(a, b, w, A, sc); break;
      default: backward_one<R, RETRO>(a, b, w, A, sc); break;
    }
  });
}

}  // namespace

// one build per precision (-DBPM_F64 for double), compiled in parallel at first use
#ifdef BPM_F64
typedef double Real;
#else
typedef float Real;
#endif

extern "C" {
int64_t bpm_padded(int64_t N) { return padded(N); }
void bpm_forward(const Args *a) { forward<Real>(*a); }
void bpm_backward(const Args *a) { backward<Real>(*a); }
}
"""


class _Args(ctypes.Structure):
    _fields_ = (
        [(n, ctypes.c_int64) for n in ("B", "T", "N", "k", "nthreads")]
        + [(n, ctypes.c_int64) for n in ("rule", "fanout", "act_tanh", "save")]
        + [(n, ctypes.c_double) for n in ("clip", "eta", "ee", "bm")]
        + [
            (n, ctypes.c_void_p)
            for n in (
                "drive_in", "starts", "h0", "H", "E", "w", "A", "wm", "fv", "fu",
                "x", "pre", "m", "ckH", "ckE",
                "gx", "gm", "gdrive", "da", "dR", "dA", "dee", "gh", "gH", "gE",
                "H0", "E0",
            )
        ]
    )


_KERNEL = CppKernel(
    "plastic_unroll",
    _SOURCE,
    {
        "bpm_forward": ([ctypes.POINTER(_Args)], None),
        "bpm_backward": ([ctypes.POINTER(_Args)], None),
        "bpm_padded": ([ctypes.c_int64], ctypes.c_int64),
    },
)


def _library() -> dict[torch.dtype, ctypes.CDLL] | None:
    """The compiled kernels by dtype, built at first use; ``None`` if they cannot be."""
    return _KERNEL.libraries()


def kernel_available() -> bool:
    """True when the C++ kernel is (or can be) built on this machine."""
    return _library() is not None


def unsupported_reason(net: PlasticRNN, inputs: Tensor) -> str | None:
    """Why the fast path cannot run ``net`` on ``inputs`` (``None`` when it can)."""
    params = [p for p in net.parameters()]
    if inputs.device.type != "cpu" or any(p.device.type != "cpu" for p in params):
        return f"the fast unroll runs on CPU only (inputs on {inputs.device})"
    if inputs.dtype not in (torch.float32, torch.float64):
        return f"the fast unroll needs float32 or float64 inputs, got {inputs.dtype}"
    if any(p.dtype != inputs.dtype for p in params):
        return "the fast unroll needs the inputs and every parameter in one dtype"
    if inputs.shape[0] < 1 or inputs.shape[1] < 1:
        return f"the fast unroll needs B >= 1 and T >= 1, got shape {tuple(inputs.shape)}"
    if net.plasticity.rule not in _RULE_CODES:
        return f"rule {net.plasticity.rule!r} has no fast unroll"
    if _library() is None:
        return f"the C++ kernel is unavailable ({_KERNEL.error})"
    return None


def supports(net: PlasticRNN, inputs: Tensor) -> bool:
    """Whether ``impl="auto"`` should take this path for ``net`` on ``inputs``.

    True where :func:`unroll` can run (CPU, float32/float64, kernel built) and is the faster
    choice: every plastic rule. For the rule ``none`` (a plain RNN) the reference's batched matrix
    product per step is about as fast on one thread (benchmarks/train_throughput.py, quiet machine:
    cue 0.050 vs 0.045 s, maze 0.031 vs 0.039 s per update), so ``auto`` keeps the reference there
    (``impl="fast"`` still runs the kernel, and is the faster one with two torch threads).
    """
    return unsupported_reason(net, inputs) is None and net.plasticity.plastic


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _SequenceFunction(torch.autograd.Function):
    """The fused sequence: (drive_in, h0, H0, E0, w, A, eta, eta_e, w_M, b_M, v, u) -> (x, M, H_T, E_T)."""

    @staticmethod
    def forward(ctx, meta, drive_in, h0, H0, E0, w, A, eta, ee, wm, bm, fv, fu):  # type: ignore[override]
        out = _run_forward(meta, drive_in, h0, H0, E0, w, A, eta, ee, wm, bm, fv, fu, save=True)
        x, pre, m, H, E, ckH, ckE = out
        ctx.meta = meta
        ctx.scalars = (
            float(eta) if eta is not None else 0.0,
            float(ee) if ee is not None else 0.0,
            float(bm) if bm is not None else 0.0,
        )
        ctx.save_for_backward(x, pre, m, ckH, ckE, w, A, wm, fv, fu)
        ctx.mark_non_differentiable(pre)
        return x, m, H, E, pre

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gx, gm, gH_T, gE_T, _gpre):  # type: ignore[override]
        meta = ctx.meta
        x, pre, m, ckH, ckE, w, A, wm, fv, fu = ctx.saved_tensors
        B, T, N = x.shape
        rule = meta["rule"]
        plastic, modulated, elig = rule != "none", rule in ("simple", "retroactive"), rule == "retroactive"
        dtype = x.dtype
        gx = torch.zeros_like(x) if gx is None else gx.contiguous()
        gm = None if (gm is None or not modulated) else gm.contiguous()
        gh = torch.zeros(B, N, dtype=dtype)  # the final hidden is x[:, -1]: its grad is in gx
        gH = (
            (torch.zeros(B, N, N, dtype=dtype) if gH_T is None else gH_T.clone(memory_format=torch.contiguous_format))
            if plastic
            else None
        )
        gE = (
            (torch.zeros(B, N, N, dtype=dtype) if gE_T is None else gE_T.clone(memory_format=torch.contiguous_format))
            if elig
            else None
        )
        gdrive = torch.empty(B, T, N, dtype=dtype)
        da = torch.zeros(B, T, dtype=dtype) if modulated else None
        if meta["fanout"]:
            dR = torch.zeros(B, T, N, dtype=dtype)
        else:
            dR = torch.zeros(B, T, dtype=dtype) if plastic else None
        dA = torch.empty(B, N, N, dtype=dtype) if plastic else None
        dee = torch.zeros(B, dtype=dtype) if elig else None
        eta, ee, bm = ctx.scalars
        args = _Args(
            B=B, T=T, N=N, k=meta["k"], nthreads=meta["nthreads"],
            rule=_RULE_CODES[rule], fanout=int(meta["fanout"]), act_tanh=int(meta["act_tanh"]), save=1,
            clip=meta["clip"], eta=eta, ee=ee, bm=bm,
            starts=_ptr(meta["starts"]), w=_ptr(w), A=_ptr(A), wm=_ptr(wm), fv=_ptr(fv), fu=_ptr(fu),
            x=_ptr(x), pre=_ptr(pre), m=_ptr(m), ckH=_ptr(ckH), ckE=_ptr(ckE),
            gx=_ptr(gx), gm=_ptr(gm), gdrive=_ptr(gdrive), da=_ptr(da), dR=_ptr(dR), dA=_ptr(dA),
            dee=_ptr(dee), gh=_ptr(gh), gH=_ptr(gH), gE=_ptr(gE),
        )
        libs = _library()
        assert libs is not None
        libs[dtype].bpm_backward(ctypes.byref(args))

        need = ctx.needs_input_grad
        flat_pre = pre.reshape(B * T, N)
        g_w = flat_pre.t() @ gdrive.reshape(B * T, N) if need[5] else None
        g_A = dA.sum(0) if (plastic and need[6]) else None
        g_eta = dR.sum().reshape(()) if (rule == "hebbian" and need[7]) else None
        g_ee = dee.sum().reshape(()) if (elig and need[8]) else None
        g_wm = g_bm = g_fv = g_fu = None
        if modulated:
            flat_da = da.reshape(B * T)
            g_wm = x.reshape(B * T, N).t() @ flat_da if need[9] else None
            g_bm = flat_da.sum().reshape(1) if need[10] else None
            if meta["fanout"]:
                g_fv = torch.einsum("btn,bt->n", dR, m) if need[11] else None
                g_fu = dR.sum((0, 1)) if need[12] else None
        return (
            None, gdrive, gh, gH if plastic else None, gE if elig else None,
            g_w, g_A, g_eta, g_ee, g_wm, g_bm, g_fv, g_fu,
        )


def _run_forward(meta, drive_in, h0, H0, E0, w, A, eta, ee, wm, bm, fv, fu, save):
    """Call the forward kernel; returns (x, pre, M, H_T, E_T, checkpoints of H, of E)."""
    B, T, N = drive_in.shape
    rule = meta["rule"]
    plastic, modulated, elig = rule != "none", rule in ("simple", "retroactive"), rule == "retroactive"
    dtype = drive_in.dtype
    k = meta["k"]
    nck = (T + k - 1) // k
    x = torch.empty(B, T, N, dtype=dtype)
    pre = torch.empty(B, T, N, dtype=dtype) if save else None
    # autograd.Function outputs must be tensors: empty ones stand for "absent"
    m = torch.empty(B, T if modulated else 0, dtype=dtype)
    # the kernel reads the initial traces (H0, E0) and writes the final ones into new tensors
    empty = torch.empty(0, dtype=dtype)
    H0 = H0.detach().contiguous() if plastic else None
    E0 = E0.detach().contiguous() if elig else None
    H = torch.empty(B, N, N, dtype=dtype) if plastic else empty
    E = torch.empty(B, N, N, dtype=dtype) if elig else empty.clone()
    libs = _library()
    assert libs is not None
    P = libs[dtype].bpm_padded(N)  # the kernel keeps trace rows padded to a multiple of 16
    ckH = torch.empty(B, nck, N * P, dtype=dtype) if (save and plastic) else None
    ckE = torch.empty(B, nck, N * P, dtype=dtype) if (save and elig) else None
    args = _Args(
        B=B, T=T, N=N, k=k, nthreads=meta["nthreads"],
        rule=_RULE_CODES[rule], fanout=int(meta["fanout"]), act_tanh=int(meta["act_tanh"]),
        save=int(save), clip=meta["clip"],
        eta=float(eta) if eta is not None else 0.0,
        ee=float(ee) if ee is not None else 0.0,
        bm=float(bm) if bm is not None else 0.0,
        drive_in=_ptr(drive_in), starts=_ptr(meta["starts"]), h0=_ptr(h0),
        H=_ptr(H) if plastic else None, E=_ptr(E) if elig else None, H0=_ptr(H0), E0=_ptr(E0),
        w=_ptr(w), A=_ptr(A), wm=_ptr(wm), fv=_ptr(fv), fu=_ptr(fu),
        x=_ptr(x), pre=_ptr(pre), m=_ptr(m) if modulated else None, ckH=_ptr(ckH), ckE=_ptr(ckE),
    )
    libs[dtype].bpm_forward(ctypes.byref(args))
    if pre is None:
        pre = torch.empty(0, dtype=dtype)
    return x, pre, m, H, E, ckH, ckE


def unroll(
    net: PlasticRNN,
    inputs: Tensor,
    state: PlasticState,
    episode_starts: Tensor | None = None,
    checkpoint_every: int | None = None,
) -> tuple[Tensor, Tensor | None, PlasticState]:
    """Same contract and numbers (to rounding) as ``PlasticRNN.reference_unroll``.

    Args:
        net: the network.
        inputs: (B, T, D).
        state: state before the first step (hidden (B, N), traces (B, N, N) or (B, 0, 0)).
        episode_starts: optional (B, T) bool; where True the state is zeroed before that step.
        checkpoint_every: steps between stored trace checkpoints (default :data:`CHECKPOINT_EVERY`).
    Returns:
        hidden (B, T, N), modulators (B, T) or ``None``, final state.
    Raises:
        ValueError: when :func:`supports` is False for these arguments, or on bad shapes.
    """
    reason = unsupported_reason(net, inputs)
    if reason is not None:
        raise ValueError(reason)
    B, T, _ = inputs.shape
    N = net.hidden_size
    cfg = net.plasticity
    syn = net.synapses
    dtype = inputs.dtype
    if state.hidden.shape != (B, N):
        raise ValueError(f"state.hidden must have shape ({B}, {N}), got {tuple(state.hidden.shape)}")
    plastic, modulated, elig = cfg.plastic, cfg.modulated, cfg.eligibility
    trace_shape = (B, N, N)
    if plastic and state.hebb.shape != trace_shape:
        raise ValueError(f"state.hebb must have shape {trace_shape}, got {tuple(state.hebb.shape)}")
    if elig and state.elig.shape != trace_shape:
        raise ValueError(f"state.elig must have shape {trace_shape}, got {tuple(state.elig.shape)}")
    starts = None
    if episode_starts is not None:
        if episode_starts.shape != (B, T):
            raise ValueError(
                f"episode_starts must have shape ({B}, {T}), got {tuple(episode_starts.shape)}"
            )
        starts = episode_starts.to(device="cpu", dtype=torch.bool).contiguous().view(torch.uint8)
    k = int(checkpoint_every or CHECKPOINT_EVERY)
    if k < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every!r}")
    meta = {
        "rule": cfg.rule,
        "fanout": bool(cfg.fanout),
        "act_tanh": cfg.modulator_activation == "tanh",
        "clip": float(cfg.clip),
        "k": min(k, T),
        "nthreads": max(1, torch.get_num_threads()),
        "starts": starts,
    }

    drive_in = net.input(inputs).contiguous()  # W_in u + b for all steps: one matmul, plain autograd
    h0 = state.hidden.to(dtype).contiguous()
    H0 = state.hebb.to(dtype) if plastic else torch.empty(0, dtype=dtype)
    E0 = state.elig.to(dtype) if elig else torch.empty(0, dtype=dtype)
    w = net.w.contiguous()
    A = None
    if plastic:
        A = syn.alpha.expand(N, N) if syn.alpha.dim() == 1 else syn.alpha
        A = A.contiguous()
    eta = syn.eta if cfg.rule == "hebbian" else None
    ee = syn.eta_e if elig else None
    wm = syn.modulator.weight.reshape(N).contiguous() if modulated else None
    bm = syn.modulator.bias if modulated else None
    fv = syn.fanout_weight.contiguous() if cfg.fanout else None
    fu = syn.fanout_bias.contiguous() if cfg.fanout else None

    tensors = (drive_in, h0, H0, E0, w, A, eta, ee, wm, bm, fv, fu)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors
    )
    if needs_grad:
        x, m, H, E, _ = _SequenceFunction.apply(meta, *tensors)
    else:
        with torch.no_grad():
            x, _, m, H, E, _, _ = _run_forward(meta, *tensors, save=False)
    if not modulated:
        m = None
    if not plastic:
        H = state.hebb
    if not elig:
        E = state.elig
    final = PlasticState(x[:, -1], H, E)
    return x, m, final
