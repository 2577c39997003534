// The plastic LSTM segment kernel (forward and backward over a BPTT segment) of
// bpm_agents/ops/plastic_lstm.py; the reference is the cell's impl="reference" path.
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
      // the choice outside the loops: inside, it becomes masked loads of null fv, fu (slow)
      if (a.fanout)
        for (int64_t j = 0; j < H; ++j) rate[j] = m * fv[j] + fu[j];
      else
        for (int64_t j = 0; j < H; ++j) rate[j] = m;
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
      if (a.fanout)
        for (int64_t j = 0; j < H; ++j) gm += gR[j] * fv[j];
      else
        for (int64_t j = 0; j < H; ++j) gm += gR[j];
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
