// Shared pieces of the backpropamine-gym C++ kernels: a persistent worker pool, padded rows,
// and the ABI check. No PyTorch headers: the kernels take raw pointers from ctypes, so a build
// takes seconds with the system compiler.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace bpm {

// Rows of every N x N array are padded to P = N rounded up to 16 (zeros in the pad, which stay
// zero through every update), so the vector loops have no scalar remainder.
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

// tanh in plain arithmetic, so a simd loop over neurons vectorizes (std::tanh is a scalar libm
// call: 6,000 of them were a third of an acting step of the plain RNN). Within 2 ulp of the
// correctly rounded tanh over [-12, 12] (relative error <= 1.7e-7); +-1 beyond |x| = 10; NaN stays
// NaN. |x| < 0.4: the odd Taylor series to x^13 (the next term is < 4e-9 relative there);
// otherwise 1 - 2 / (e^(2|x|) + 1) with e^y = 2^n e^r, |r| <= ln(2) / 2, e^r to r^8.
inline float tanh_approx(float x) {
  const float a = std::fabs(x);
  const float ax = a < 10.0f ? a : 10.0f;
  const float x2 = ax * ax;
  float p = 21844.0f / 6081075.0f;
  p = p * x2 - 1382.0f / 155925.0f;
  p = p * x2 + 62.0f / 2835.0f;
  p = p * x2 - 17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 - 1.0f / 3.0f;
  const float small = ax + ax * x2 * p;
  const float y = 2.0f * ax;
  // n = round(y / ln 2) by adding and subtracting 1.5 * 2^23 (std::floor does not vectorize)
  const float n = (y * 1.44269504f + 12582912.0f) - 12582912.0f;
  const float r = (y - n * 0.693359375f) + n * 2.12194440e-4f;  // ln 2 in two parts
  float e = 1.0f / 40320.0f;
  e = e * r + 1.0f / 5040.0f;
  e = e * r + 1.0f / 720.0f;
  e = e * r + 1.0f / 120.0f;
  e = e * r + 1.0f / 24.0f;
  e = e * r + 1.0f / 6.0f;
  e = e * r + 0.5f;
  e = e * r + 1.0f;
  e = e * r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;  // 2^n, n <= 29
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float big = 1.0f - 2.0f / (e * scale + 1.0f);
  const float t = std::copysign(ax < 0.4f ? small : big, x);
  return x != x ? x : t;
}
// float64 keeps the library tanh: its tests hold the kernels to the reference within 1e-9
inline double tanh_approx(double x) { return std::tanh(x); }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// A pool of worker threads that lives as long as the process, so an acting step (a fraction of
// a millisecond of work) does not pay for creating and joining threads. Workers spin briefly
// after a job (the next acting step usually follows within tens of microseconds) and then sleep
// on a condition variable, so an idle pool costs no CPU. BPM_POOL_SPIN_US sets the spin (default
// 50 us; 0 = sleep at once, for machines shared with other jobs).
class ThreadPool {
 public:
  using Fn = void (*)(void *ctx, int64_t task, int worker);

  static ThreadPool &get() {
    // a forked child inherits the pool object but not its threads: it gets a new pool
    static ThreadPool *pool = nullptr;
    static pid_t owner = 0;
    static std::mutex mu;
    std::lock_guard<std::mutex> lk(mu);
    if (pool == nullptr || owner != getpid()) {
      pool = new ThreadPool();  // never destroyed: workers are detached and die with the process
      owner = getpid();
    }
    return *pool;
  }

  // fn(ctx, task, worker) for every task in [0, ntasks), on at most nthreads threads; the
  // caller is worker 0. Workers are numbered so a caller can give each its own scratch.
  void run(int64_t ntasks, int64_t nthreads, Fn fn, void *ctx) {
    const int64_t n = std::max<int64_t>(1, std::min(nthreads, ntasks));
    if (n == 1) {
      for (int64_t i = 0; i < ntasks; ++i) fn(ctx, i, 0);
      return;
    }
    std::lock_guard<std::mutex> one_job(job_mu_);
    while ((int64_t)nworkers_ < n - 1) {
      const int id = ++nworkers_;
      // the generation is read here, not in the new thread, so it cannot miss this job
      const uint64_t seen = gen_.load(std::memory_order_acquire);
      std::thread([this, id, seen] { loop(id, seen); }).detach();
    }
    fn_ = fn;
    ctx_ = ctx;
    ntasks_ = ntasks;
    active_ = (int)(n - 1);
    next_.store(0, std::memory_order_relaxed);
    pending_.store((int)(n - 1), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mu_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    work(0);
    // wait for the helpers: spin first (they finish at about the same time), then sleep
    const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
    while (pending_.load(std::memory_order_acquire) != 0) {
      if (std::chrono::steady_clock::now() > spin_until) {
        std::unique_lock<std::mutex> lk(mu_);
        done_cv_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
        break;
      }
      cpu_relax();
    }
  }

 private:
  ThreadPool() {
    const char *s = std::getenv("BPM_POOL_SPIN_US");
    spin_us_ = s ? std::max(0L, std::atol(s)) : 50;
  }

  void work(int id) {
    for (int64_t i = next_.fetch_add(1); i < ntasks_; i = next_.fetch_add(1)) fn_(ctx_, i, id);
  }

  void loop(int id, uint64_t seen) {
    for (;;) {
      const auto spin_until =
          std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
      while (gen_.load(std::memory_order_acquire) == seen &&
             std::chrono::steady_clock::now() < spin_until)
        cpu_relax();
      if (gen_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
      }
      seen = gen_.load(std::memory_order_acquire);
      if (id > active_) continue;  // this job needs fewer threads
      work(id);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_one();
      }
    }
  }

  std::mutex job_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};
  int nworkers_ = 0, active_ = 0;
  int64_t ntasks_ = 0;
  long spin_us_ = 50;
  Fn fn_ = nullptr;
  void *ctx_ = nullptr;
};

// fn(b, worker) for b in [0, B) on the pool (F is any callable; its type is erased here)
template <typename F>
void parallel_for(int64_t B, int64_t nthreads, F &fn) {
  ThreadPool::get().run(
      B, nthreads, [](void *ctx, int64_t b, int worker) { (*static_cast<F *>(ctx))(b, worker); },
      &fn);
}

}  // namespace bpm
