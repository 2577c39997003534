// Fused forward/backward and acting step of the plastic RNN (bpm_agents/ops/plastic_rnn.py).
// The rules are DEFINED in bpm_agents/plasticity.py; this file restates that arithmetic and the
// tests compare both. One thread owns one batch element at a time, so its traces stay in cache.
#include <cmath>
#include <memory>

#include "bpm_common.h"

// Bump BPM_RNN_ABI whenever Args changes: the Python side checks it (and sizeof(Args)) at load.
#define BPM_RNN_ABI 4

extern "C" {
struct Args {
  int64_t B, T, N, k, nthreads;
  int64_t rule, fanout, act_tanh, save;
  double clip, eta, ee, bm;
  void *drive_in, *starts, *h0, *H, *E, *w, *A, *wm, *fv, *fu;
  void *x, *pre, *m, *ckH, *ckE;
  void *gx, *gm, *gdrive, *da, *dR, *dA, *dee, *gh, *gH, *gE;
  void *H0, *E0;  // forward: initial traces (read); H, E receive the final ones
  // acting (one step at a time, state kept padded between calls)
  int64_t D, n_actions, t;
  void *obs, *w_in, *b_in, *w_pi, *b_pi, *uniform, *actions;
  void *S, *rec, *Hp, *Ep, *Wp, *Ap;  // state (B, P), next recurrent drive (B, P), traces (B, N*P), padded w, A
  void *WinT;                         // W_in transposed and padded, (D, P)
  // backward: the incoming gradients of the final traces (read; null = zero); gH, gE receive
  // those of the initial ones
  void *gH_in, *gE_in;
};
}

using bpm::padded;
using bpm::pad_rows;
using bpm::unpad_rows;

namespace {

enum { NONE = 0, HEBBIAN = 1, SIMPLE = 2, RETRO = 3 };

// the plain RNN acts and backpropagates this many batch elements together (mat_mat)
constexpr int64_t kNoneBlock = 8;

// fn(b0, n) for consecutive blocks of n elements covering 0 .. B - 1 on the persistent pool:
// up to kNoneBlock elements a block, fewer where that would leave threads without a block
template <typename F>
void parallel_over_blocks(int64_t B, int64_t nthreads, F fn) {
  const int64_t t = std::max<int64_t>(nthreads, 1);
  const int64_t bs = std::max<int64_t>(1, std::min(kNoneBlock, (B + t - 1) / t));
  auto task = [&](int64_t blk, int) { fn(blk * bs, std::min(bs, B - blk * bs)); };
  bpm::parallel_for((B + bs - 1) / bs, nthreads, task);
}

// fn(b, scratch) for every batch element on the persistent pool; each worker owns one scratch
template <typename R, typename F>
void parallel_over_batch(int64_t B, int64_t nthreads, size_t scratch_size, F fn) {
  const int64_t n = std::max<int64_t>(1, std::min(nthreads, B));
  std::vector<std::unique_ptr<R[]>> scratch(n);
  for (auto &buf : scratch) buf.reset(scratch_size ? new R[scratch_size] : nullptr);
  auto task = [&](int64_t b, int worker) { fn(b, scratch[worker].get()); };
  bpm::parallel_for(B, n, task);
}

// rate R_j of one step (eta, M, or v_j M + u_j) and R_j x_j; entries j >= N stay untouched (0)
// (one loop per case: with the choice inside, GCC if-converts it into masked loads of fv and fu,
// which are null without fan-out, and each masked load of a null page costs a fault-suppression
// assist: one loop per case made cue simple's learning step a quarter faster on a Zen 4)
template <typename R>
void rates(const Args &a, R m, const R *x, R *rate, R *rx) {
  const int64_t N = a.N;
  if (a.rule == HEBBIAN || !a.fanout) {
    const R r = a.rule == HEBBIAN ? (R)a.eta : m;
    for (int64_t j = 0; j < N; ++j) {
      rate[j] = r;
      rx[j] = r * x[j];
    }
  } else {
    const R *fv = (const R *)a.fv, *fu = (const R *)a.fu;
    for (int64_t j = 0; j < N; ++j) {
      const R r = m * fv[j] + fu[j];
      rate[j] = r;
      rx[j] = r * x[j];
    }
  }
}

// y_j += sum_i s_i W_ij over a block of BJ columns held in registers across the rows (a store
// per row and column otherwise). The sum over i keeps its order, so the result is unchanged.
template <typename R, int64_t BJ>
inline void vec_mat_block(int64_t N, int64_t P, const R *s, const R *W, R *y) {
  R acc[BJ];
  for (int64_t j = 0; j < BJ; ++j) acc[j] = y[j];
  for (int64_t i = 0; i < N; ++i) {
    const R si = s[i];
    const R *wi = W + i * P;
#pragma omp simd
    for (int64_t j = 0; j < BJ; ++j) acc[j] += si * wi[j];
  }
  for (int64_t j = 0; j < BJ; ++j) y[j] = acc[j];
}

// y_j += sum_i s_i W_ij, j < P (P a multiple of 16)
template <typename R>
void vec_mat(int64_t N, int64_t P, const R *s, const R *W, R *y) {
  int64_t j = 0;
  for (; j + 64 <= P; j += 64) vec_mat_block<R, 64>(N, P, s, W + j, y + j);
  for (; j < P; j += 16) vec_mat_block<R, 16>(N, P, s, W + j, y + j);
}

// The same for G rows at once, y_g,j += sum_i s_g,i W_ij: each row of W is loaded once for the G
// elements (vec_mat loads it once per element, which made the plain RNN's step bound by loads
// from L2). Every element's sum over i keeps vec_mat's order, so the results are the same bits.
template <typename R, int64_t G, int64_t BJ>
inline void mat_mat_block(int64_t N, int64_t P, int64_t j0, const R *const *s, const R *W,
                          R *const *y) {
  R acc[G][BJ];
  for (int64_t g = 0; g < G; ++g)
    for (int64_t j = 0; j < BJ; ++j) acc[g][j] = y[g][j0 + j];
  for (int64_t i = 0; i < N; ++i) {
    const R *wi = W + i * P + j0;
    for (int64_t g = 0; g < G; ++g) {
      const R si = s[g][i];
#pragma omp simd
      for (int64_t j = 0; j < BJ; ++j) acc[g][j] += si * wi[j];
    }
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t j = 0; j < BJ; ++j) y[g][j0 + j] = acc[g][j];
}

// y_g,j += sum_i s_g,i W_ij for g < n (any n >= 1), j < P (P a multiple of 16). Blocks of 4
// elements x 16 columns: fastest of those tried with AVX-512 and AVX2 (4/6/8 x 16/32/64).
template <typename R>
void mat_mat(int64_t n, int64_t N, int64_t P, const R *const *s, const R *W, R *const *y) {
  int64_t g = 0;
  for (; g + 4 <= n; g += 4)
    for (int64_t j = 0; j < P; j += 16) mat_mat_block<R, 4, 16>(N, P, j, s + g, W, y + g);
  for (; g < n; ++g) vec_mat<R>(N, P, s[g], W, y[g]);
}

// drive_j += sum_i s_i (w_ij + A_ij H_ij)   (H == nullptr: rule none)
template <typename R>
void drive_pass(int64_t N, int64_t P, const R *s, const R *w, const R *A, const R *H, R *drive) {
  if (!H) return vec_mat<R>(N, P, s, w, drive);
  for (int64_t i = 0; i < N; ++i) {
    const R si = s[i];
    const R *wi = w + i * P, *Ai = A + i * P, *Hi = H + i * P;
#pragma omp simd
    for (int64_t j = 0; j < P; ++j) drive[j] += si * (wi[j] + Ai[j] * Hi[j]);
  }
}

// The trace before its clip, z = H + R_j E_ij (retroactive) or H + s_i R_j x_j: one function, so
// the backward recomputes exactly the z of the forward to find where the clip passed the
// gradient (torch.clamp: min <= z <= max) instead of storing a mask per step.
template <typename R, int RULE>
inline R pre_clip(R h, R e, R rate, R si, R rx) {
  return RULE == RETRO ? h + rate * e : h + si * rx;
}

// One trace update (pre s, post x): Hi/Ei -> Ho/Eo (may alias). DRIVE: also accumulate the next
// step's drive, sum_i x_i (w_ij + A_ij Hnew_ij), while Hnew is in registers.
template <typename R, int RULE, bool DRIVE>
void update_pass(int64_t N, int64_t P, R c, R ee, const R *Hi_, const R *Ei_, R *Ho_, R *Eo_,
                 const R *s, const R *x, const R *rate, const R *rx, const R *w, const R *A,
                 R *drive) {
  const R keep = (R)1 - ee;
  for (int64_t i = 0; i < N; ++i) {
    const R *Hi = Hi_ + i * P;
    R *Ho = Ho_ + i * P;
    const R *Ei = RULE == RETRO ? Ei_ + i * P : nullptr;
    R *Eo = RULE == RETRO ? Eo_ + i * P : nullptr;
    const R *wi = w + i * P, *Ai = A + i * P;
    const R si = s[i], xi = x[i];
#pragma omp simd
    for (int64_t j = 0; j < P; ++j) {
      const R e = RULE == RETRO ? Ei[j] : (R)0;
      const R z = pre_clip<R, RULE>(Hi[j], e, rate[j], si, rx[j]);
      if (RULE == RETRO) Eo[j] = keep * e + ee * (si * x[j]);
      const R h = std::min(std::max(z, -c), c);
      Ho[j] = h;
      if (DRIVE) drive[j] += xi * (wi[j] + Ai[j] * h);
    }
  }
}

template <typename R>
size_t forward_scratch_size(const Args &a) {
  const size_t NP = a.N * padded(a.N);
  return a.rule == NONE ? 0 : NP * (a.rule == RETRO ? 2 : 1);
}

// the plastic rules' forward of one element (rule none: forward_none_block)
template <typename R, int RULE>
void forward_one(const Args &a, int64_t b, const R *w, const R *A, R *scratch) {
  static_assert(RULE != NONE, "rule none runs forward_none_block");
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
    {
      R *xv = x.data();
      const R *dv = drive.data();
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) xv[j] = bpm::tanh_approx(dv[j]);
    }
    std::memcpy(xs + t * N, x.data(), N * sizeof(R));
    R m = 0;
    if (modulated) {
      R acc = (R)a.bm;
      for (int64_t j = 0; j < N; ++j) acc += wm[j] * x[j];
      m = a.act_tanh ? bpm::tanh_approx(acc) : acc;
      ((R *)a.m)[b * T + t] = m;
    }
    const bool has_next = t + 1 < T, reset_next = has_next && st && st[t + 1];
    if (has_next) std::memcpy(drive.data(), din + (t + 1) * N, N * sizeof(R));
    rates<R>(a, m, x.data(), rate.data(), rx.data());
    if (has_next && !reset_next)
      update_pass<R, RULE, true>(N, P, c, ee, H, E, H, E, s.data(), x.data(), rate.data(),
                                 rx.data(), w, A, drive.data());
    else
      update_pass<R, RULE, false>(N, P, c, ee, H, E, H, E, s.data(), x.data(), rate.data(),
                                  rx.data(), w, A, nullptr);
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
//  A-part (step u = t - 1, or t alone): through the clipped trace update of step u, whose
//                   inputs Hu, Eu (the traces step u read) give back its clip mask.
// Fused (no reset at t, so kp = 1), the B-part's H_{t-1} is the clip of the A-part's z: it is
// recomputed in registers (the same bits as the replay stored) instead of read (Hp unused), one
// array stream less out of eight.
template <typename R, int RULE, bool DO_B, bool DO_A>
void backward_pass(int64_t N, int64_t P, R c, R ee, const R *w, const R *A, const R *Hp,
                   const R *s, const R *dd, R kp, R *gH, R *dA, R *rowB, const R *Hu,
                   const R *Ep, const R *s2, const R *x2, const R *rate2, const R *rx2, R *gE,
                   R *col, R *dRv, R *rowA, R &dee) {
  const R keep = (R)1 - ee;
  for (int64_t i = 0; i < N; ++i) {
    R *gHi = gH + i * P;
    const R *wi = w + i * P, *Ai = A + i * P;
    const R *Hi = (DO_B && !DO_A) ? Hp + i * P : nullptr;
    R *dAi = DO_B ? dA + i * P : nullptr;
    const R *Hui = DO_A ? Hu + i * P : nullptr;
    const R *Ei = (DO_A && RULE == RETRO) ? Ep + i * P : nullptr;
    R *gEi = (DO_A && RULE == RETRO) ? gE + i * P : nullptr;
    const R si = DO_B ? s[i] : (R)0, s2i = DO_A ? s2[i] : (R)0;
    R accB = 0, accA = 0, accGe = 0;
#pragma omp simd reduction(+ : accB, accA, accGe)
    for (int64_t j = 0; j < P; ++j) {
      R g1 = gHi[j];
      R e = (R)0, z = (R)0;
      if (DO_A) {
        e = RULE == RETRO ? Ei[j] : (R)0;
        z = pre_clip<R, RULE>(Hui[j], e, rate2[j], s2i, rx2[j]);
      }
      if (DO_B) {
        const R h = DO_A ? std::min(std::max(z, -c), c) : Hi[j];
        const R sd = si * dd[j], al = Ai[j];
        accB += (wi[j] + al * h) * dd[j];
        dAi[j] += h * sd;
        g1 = DO_A ? g1 + al * sd : (g1 + al * sd) * kp;
      }
      if (DO_A) {
        // where the clip passed z (min <= z <= max; also false for NaN): with the B-part, z equal
        // to its clip, one compare instead of two
        const R g = (DO_B ? z == std::min(std::max(z, -c), c) : (z >= -c && z <= c)) ? g1 : (R)0;
        if (RULE == RETRO) {
          const R ge = gEi[j];
          dRv[j] += g * e;
          accGe += ge * e;
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
      // d eta_e of E' = (1 - ee) E + ee s x: sum_j gE (s x - E) = s sum_j gE x - sum_j gE E,
      // from the sums the loop keeps anyway (one vector operation less per entry)
      if (RULE == RETRO) dee += s2i * accA - accGe;
    }
  }
}

template <typename R>
size_t backward_scratch_size(const Args &a) {
  const size_t NP = a.N * padded(a.N), k = a.k;
  if (a.rule == NONE) return 0;
  const size_t traces = a.rule == RETRO ? 2 : 1;
  // gH, dA (and gE); traces of k + 1 steps
  return (1 + traces) * NP + (k + 1) * NP * traces;
}

// the plastic rules' backward of one element (rule none: backward_none_block)
template <typename R, int RULE>
void backward_one(const Args &a, int64_t b, const R *w, const R *A, R *scratch) {
  static_assert(RULE != NONE, "rule none runs backward_none_block");
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
  if (plastic) {
    if (a.gH_in) pad_rows((const R *)a.gH_in + b * NN, gH, N, P);
    else std::fill(gH, gH + NP, (R)0);
    std::fill(dA, dA + NP, (R)0);
  }
  if (elig) {
    if (a.gE_in) pad_rows((const R *)a.gE_in + b * NN, gE, N, P);
    else std::fill(gE, gE + NP, (R)0);
  }
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
      update_pass<R, RULE, false>(N, P, c, ee, Hu, Eu, Hu + NP, elig ? Eu + NP : nullptr,
                                  pres + t * N, xp.data(), rate.data(), rx.data(), w, A, nullptr);
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
        N, P, c, ee, w, A, nullptr, nullptr, nullptr, (R)1, gH, nullptr, nullptr,
        Hs + slot(u) * NP, elig ? Es + slot(u) * NP : nullptr, pres + u * N, x2p.data(),
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
    const bool same_seg = t > 0 && (t - 1) / k == cur_seg;
    if (same_seg && kp == (R)1) {
      const int64_t u = t - 1;
      prepare_a(u);
      backward_pass<R, RULE, true, true>(
          N, P, c, ee, w, A, nullptr, s, dd.data(), kp, gH, dA, rowB.data(),
          Hs + slot(u) * NP, elig ? Es + slot(u) * NP : nullptr, pres + u * N, x2p.data(),
          rate2.data(), rx2.data(), gE, col.data(), dRv.data(), rowA.data(), dee);
    } else {
      backward_pass<R, RULE, true, false>(N, P, c, ee, w, A, Hs + slot(t) * NP, s, dd.data(), kp,
                                          gH, dA, rowB.data(), nullptr, nullptr, nullptr,
                                          nullptr, nullptr, nullptr, gE, nullptr, nullptr,
                                          nullptr, dee);
      if (elig && kp == (R)0) std::fill(gE, gE + NP, (R)0);
      if (t > 0) {
        if (!same_seg) replay((t - 1) / k);
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

// Rule none's backward for elements b0 .. b0 + n - 1 in lock-step, so that the product with w
// (wT: w transposed, padded) runs as one mat_mat per step for the block. Per element the
// arithmetic and its order are those of one element alone (the results are the same bits).
template <typename R>
void backward_none_block(const Args &a, int64_t b0, int64_t n, const R *wT) {
  const int64_t T = a.T, N = a.N, P = padded(N);
  std::vector<R> gs(n * P, (R)0), dd(n * P, (R)0), rowB(n * P, (R)0);
  const R *ddp[kNoneBlock];
  R *rowp[kNoneBlock];
  for (int64_t g = 0; g < n; ++g) {
    ddp[g] = dd.data() + g * P;
    rowp[g] = rowB.data() + g * P;
  }
  auto finish_step = [&](int64_t t) {
    for (int64_t g = 0; g < n; ++g) {
      const int64_t b = b0 + g;
      const R *x = (const R *)a.x + (b * T + t) * N, *gxo = (const R *)a.gx + (b * T + t) * N;
      const R *gsg = gs.data() + g * P;
      R *ddg = dd.data() + g * P;
      for (int64_t j = 0; j < N; ++j) ddg[j] = (gxo[j] + gsg[j]) * ((R)1 - x[j] * x[j]);
      std::memcpy((R *)a.gdrive + (b * T + t) * N, ddg, N * sizeof(R));
    }
  };
  finish_step(T - 1);
  for (int64_t t = T - 1; t >= 0; --t) {
    std::fill(rowB.begin(), rowB.end(), (R)0);
    mat_mat<R>(n, N, P, ddp, wT, rowp);
    for (int64_t g = 0; g < n; ++g) {
      const uint8_t *st = a.starts ? (const uint8_t *)a.starts + (b0 + g) * T : nullptr;
      const R kp = (st && st[t]) ? (R)0 : (R)1;
      R *gsg = gs.data() + g * P;
      const R *rb = rowB.data() + g * P;
      // + 0 as the per-element loop this replaced had it (it turns -0 into +0), for the same bits
      for (int64_t i = 0; i < N; ++i) gsg[i] = (rb[i] + (R)0) * kp;
    }
    if (t > 0) finish_step(t - 1);
  }
  for (int64_t g = 0; g < n; ++g)
    std::memcpy((R *)a.gh + (b0 + g) * N, gs.data() + g * P, N * sizeof(R));
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

// Rule none's forward for elements b0 .. b0 + n - 1 in lock-step, so that the recurrent drive is
// one mat_mat per step for the block (per element the same arithmetic, in the same order, as
// one element alone).
template <typename R>
void forward_none_block(const Args &a, int64_t b0, int64_t n, const R *w) {
  const int64_t T = a.T, N = a.N, P = padded(N);
  std::vector<R> s(n * P, (R)0), drive(n * P, (R)0), x(n * P, (R)0);
  const R *sp[kNoneBlock];
  R *dp[kNoneBlock];
  auto starts = [&](int64_t g, int64_t t) {
    return a.starts && ((const uint8_t *)a.starts)[(b0 + g) * T + t];
  };
  for (int64_t g = 0; g < n; ++g) {
    const int64_t b = b0 + g;
    R *sg = s.data() + g * P;
    if (starts(g, 0)) std::fill(sg, sg + P, (R)0);
    else std::memcpy(sg, (const R *)a.h0 + b * N, N * sizeof(R));
    std::memcpy(drive.data() + g * P, (const R *)a.drive_in + b * T * N, N * sizeof(R));
    sp[g] = sg;
    dp[g] = drive.data() + g * P;
  }
  mat_mat<R>(n, N, P, sp, w, dp);
  for (int64_t t = 0; t < T; ++t) {
    int64_t m = 0;  // the elements whose next step reads this step's state
    for (int64_t g = 0; g < n; ++g) {
      const int64_t b = b0 + g;
      R *sg = s.data() + g * P, *xg = x.data() + g * P, *dg = drive.data() + g * P;
      if (a.save) std::memcpy((R *)a.pre + (b * T + t) * N, sg, N * sizeof(R));
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) xg[j] = bpm::tanh_approx(dg[j]);
      std::memcpy((R *)a.x + (b * T + t) * N, xg, N * sizeof(R));
      const bool has_next = t + 1 < T, reset_next = has_next && starts(g, t + 1);
      if (has_next) std::memcpy(dg, (const R *)a.drive_in + (b * T + t + 1) * N, N * sizeof(R));
      if (has_next && !reset_next) {
        sp[m] = xg;
        dp[m++] = dg;
      }
      if (reset_next) std::fill(sg, sg + P, (R)0);
      else std::memcpy(sg, xg, N * sizeof(R));
    }
    mat_mat<R>(m, N, P, sp, w, dp);
  }
}

template <typename R>
void forward(const Args &a) {
  Weights<R> W(a);
  const R *w = W.w.data(), *A = W.A.data();
  if (a.rule == NONE) {
    parallel_over_blocks(a.B, a.nthreads,
                         [&](int64_t b0, int64_t n) { forward_none_block<R>(a, b0, n, w); });
    return;
  }
  parallel_over_batch<R>(a.B, a.nthreads, forward_scratch_size<R>(a), [&](int64_t b, R *sc) {
    switch (a.rule) {
      case HEBBIAN: forward_one<R, HEBBIAN>(a, b, w, A, sc); break;
      case SIMPLE: forward_one<R, SIMPLE>(a, b, w, A, sc); break;
      default: forward_one<R, RETRO>(a, b, w, A, sc); break;
    }
  });
}

template <typename R>
void backward(const Args &a) {
  Weights<R> W(a);
  if (a.rule == NONE) {  // it reads w transposed: rowB_i = sum_j w_ij dd_j as a vector over i
    const int64_t N = a.N, P = padded(N);
    std::vector<R> wT(N * P, (R)0);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) wT[j * P + i] = W.w[i * P + j];
    parallel_over_blocks(a.B, a.nthreads,
                         [&](int64_t b0, int64_t n) { backward_none_block<R>(a, b0, n, wT.data()); });
    return;
  }
  const R *w = W.w.data(), *A = W.A.data();
  parallel_over_batch<R>(a.B, a.nthreads, backward_scratch_size<R>(a), [&](int64_t b, R *sc) {
    switch (a.rule) {
      case HEBBIAN: backward_one<R, HEBBIAN>(a, b, w, A, sc); break;
      case SIMPLE: backward_one<R, SIMPLE>(a, b, w, A, sc); break;
      default: backward_one<R, RETRO>(a, b, w, A, sc); break;
    }
  });
}

// ---------------------------------------------------------------------------------- acting
// Acting runs the same forward one step at a time (the next input depends on the sampled
// action), with the state kept in the kernel's padded layout between calls: S (B, P) hidden,
// rec (B, P) the recurrent drive of the next step (accumulated while the traces are updated),
// Hp/Ep (B, N*P) traces. It records what the backward needs (x, pre, M, trace checkpoints), so
// learning can run the backward alone, and it samples the action from the policy head.

template <typename R>
void act_begin_one(const Args &a, int64_t b) {
  const int64_t N = a.N, P = padded(N), NP = N * P, NN = N * N, k = a.k;
  const int64_t nck = (a.T + k - 1) / k;
  const bool plastic = a.rule != NONE, elig = a.rule == RETRO;
  R *s = (R *)a.S + b * P, *rec = (R *)a.rec + b * P;
  std::fill(s, s + P, (R)0);
  std::memcpy(s, (const R *)a.h0 + b * N, N * sizeof(R));
  R *H = plastic ? (R *)a.Hp + b * NP : nullptr;
  R *E = elig ? (R *)a.Ep + b * NP : nullptr;
  // no H0 / E0: the episodes start from zero traces (written here, so the caller need not fill)
  if (plastic) {
    if (a.H0) pad_rows((const R *)a.H0 + b * NN, H, N, P);
    else std::fill(H, H + NP, (R)0);
  }
  if (elig) {
    if (a.E0) pad_rows((const R *)a.E0 + b * NN, E, N, P);
    else std::fill(E, E + NP, (R)0);
  }
  if (a.save) {
    if (plastic) std::memcpy((R *)a.ckH + (b * nck) * NP, H, NP * sizeof(R));
    if (elig) std::memcpy((R *)a.ckE + (b * nck) * NP, E, NP * sizeof(R));
  }
  std::fill(rec, rec + P, (R)0);
  drive_pass<R>(N, P, s, (const R *)a.Wp, (const R *)a.Ap, H, rec);
}

template <typename R, int RULE>
void act_step_one(const Args &a, int64_t b) {
  const int64_t T = a.T, N = a.N, P = padded(N), NP = N * P, D = a.D, k = a.k, t = a.t;
  const int64_t nck = (T + k - 1) / k, nA = a.n_actions;
  constexpr bool plastic = RULE != NONE, modulated = RULE >= SIMPLE, elig = RULE == RETRO;
  const R *Wp = (const R *)a.Wp, *Ap = (const R *)a.Ap, *wm = (const R *)a.wm;
  R *s = (R *)a.S + b * P, *rec = (R *)a.rec + b * P;
  R *H = plastic ? (R *)a.Hp + b * NP : nullptr;
  R *E = elig ? (R *)a.Ep + b * NP : nullptr;
  thread_local std::vector<R> x, rate, rx;
  x.assign(P, (R)0);
  rate.assign(P, (R)0);
  rx.assign(P, (R)0);
  // drive = W_in u + b + (recurrent drive computed at the end of the previous step); W_in is
  // stored transposed (D, P) so the sum over inputs is a vector loop over neurons
  const R *u = (const R *)a.obs + b * D, *winT = (const R *)a.WinT, *bin = (const R *)a.b_in;
  std::memcpy(x.data(), bin, N * sizeof(R));
  vec_mat<R>(D, P, u, winT, x.data());
  {
    R *xv = x.data();
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) xv[j] = bpm::tanh_approx(xv[j] + rec[j]);
  }
  if (a.save) std::memcpy((R *)a.pre + (b * T + t) * N, s, N * sizeof(R));
  std::memcpy((R *)a.x + (b * T + t) * N, x.data(), N * sizeof(R));
  R m = 0;
  if (modulated) {
    R acc = (R)a.bm;
    for (int64_t j = 0; j < N; ++j) acc += wm[j] * x[j];
    m = a.act_tanh ? bpm::tanh_approx(acc) : acc;
    ((R *)a.m)[b * T + t] = m;
  }
  if (plastic) {  // rule none: act_step computes the drive for a block of elements at once
    std::fill(rec, rec + P, (R)0);
    rates<R>(a, m, x.data(), rate.data(), rx.data());
    update_pass<R, RULE, true>(N, P, (R)a.clip, (R)a.ee, H, E, H, E, s, x.data(), rate.data(),
                               rx.data(), Wp, Ap, rec);
  }
  if (a.save && t + 1 < T && (t + 1) % k == 0) {
    if (plastic) std::memcpy((R *)a.ckH + (b * nck + (t + 1) / k) * NP, H, NP * sizeof(R));
    if (elig) std::memcpy((R *)a.ckE + (b * nck + (t + 1) / k) * NP, E, NP * sizeof(R));
  }
  std::memcpy(s, x.data(), N * sizeof(R));
  // policy head and sampling by inverse CDF: the first action whose cumulative probability
  // exceeds the uniform draw (bpm_agents.policy.sample_actions is the reference)
  const R *wpi = (const R *)a.w_pi, *bpi = (const R *)a.b_pi;
  double logits[64], mx = -INFINITY, tot = 0;
  for (int64_t q = 0; q < nA; ++q) {
    R acc = 0;
    const R *wq = wpi + q * N;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < N; ++j) acc += wq[j] * x[j];
    logits[q] = (double)(acc + bpi[q]);
    mx = std::max(mx, logits[q]);
  }
  for (int64_t q = 0; q < nA; ++q) tot += (logits[q] = std::exp(logits[q] - mx));
  const double draw = ((const double *)a.uniform)[b * T + t];
  double cdf = 0;
  int64_t action = 0;
  for (int64_t q = 0; q < nA; ++q) {
    cdf += logits[q] / tot;
    if (cdf <= draw) action = q + 1;
  }
  ((int64_t *)a.actions)[b] = std::min(action, nA - 1);
}

template <typename R>
void act_begin(const Args &a) {
  const int64_t N = a.N, P = padded(N), D = a.D;
  R *winT = (R *)a.WinT;
  const R *win = (const R *)a.w_in;  // (N, D), as torch.nn.Linear stores it
  std::fill(winT, winT + D * P, (R)0);
  for (int64_t j = 0; j < N; ++j)
    for (int64_t d = 0; d < D; ++d) winT[d * P + j] = win[j * D + d];
  pad_rows((const R *)a.w, (R *)a.Wp, a.N, padded(a.N));
  if (a.rule != NONE) pad_rows((const R *)a.A, (R *)a.Ap, a.N, padded(a.N));
  auto fn = [&](int64_t b, int) { act_begin_one<R>(a, b); };
  bpm::parallel_for(a.B, a.nthreads, fn);
}

// the recurrent drive of the next step for elements b0 .. b0 + n - 1 of the plain RNN
template <typename R>
void act_drive_none(const Args &a, int64_t b0, int64_t n) {
  const int64_t P = padded(a.N);
  const R *s[kNoneBlock];
  R *rec[kNoneBlock];
  for (int64_t g = 0; g < n; ++g) {
    s[g] = (const R *)a.S + (b0 + g) * P;
    rec[g] = (R *)a.rec + (b0 + g) * P;
    std::fill(rec[g], rec[g] + P, (R)0);
  }
  mat_mat<R>(n, a.N, P, s, (const R *)a.Wp, rec);
}

template <typename R>
void act_step(const Args &a) {
  if (a.rule == NONE) {  // blocks of elements, so each row of w is loaded once per block
    parallel_over_blocks(a.B, a.nthreads, [&](int64_t b0, int64_t n) {
      for (int64_t b = b0; b < b0 + n; ++b) act_step_one<R, NONE>(a, b);
      act_drive_none<R>(a, b0, n);
    });
    return;
  }
  auto fn = [&](int64_t b, int) {
    switch (a.rule) {
      case HEBBIAN: act_step_one<R, HEBBIAN>(a, b); break;
      case SIMPLE: act_step_one<R, SIMPLE>(a, b); break;
      default: act_step_one<R, RETRO>(a, b); break;
    }
  };
  bpm::parallel_for(a.B, a.nthreads, fn);
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
void bpm_act_begin(const Args *a) { act_begin<Real>(*a); }
void bpm_act_step(const Args *a) { act_step<Real>(*a); }
// what this library was built for: the Python side refuses a library whose layout differs
int64_t bpm_abi() { return BPM_RNN_ABI * 100000 + (int64_t)sizeof(Args) * 10 + (int64_t)sizeof(Real); }
}
