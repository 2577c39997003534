"""A small roofline of one A2C training step (issue 28): this machine's measured memory bandwidth
and arithmetic peak at one thread, against the bytes and flops the fused kernel moves per update.

1. Bandwidth: a triad ``a = b + s * c`` (float32, torch, one thread) on working sets that fit L2,
   fit L3, and exceed L3; GB/s counts 12 bytes per element (two reads, one write).
2. Peak: a 1024 x 1024 float32 matmul at one thread (what a vectorised kernel can reach).
3. The step: acting (the fused actor, ``trainer.collect``) and learning (``trainer.learn``: the
   kernel's backward with its segment replay, the heads, Adam) timed apart (medians), beside a
   count of the N x P array passes of ``bpm_agents/ops/csrc/plastic_rnn.cpp`` per step and episode
   (one pass = one read or one write of an N x P float32 array; P = N rounded up to 16):

   ============ ======================================= ======================================
   rule         acting (forward with the next drive)    learning (replay + fused backward)
   ============ ======================================= ======================================
   retroactive  read H E w A, write H E: 6 (11 flops)   replay 2 r + 2 w (10); backward 8 r +
                                                        3 w (25 flops)
   simple       read H w A, write H: 4 (8)              replay 1 r + 1 w (6); backward 6 r +
                                                        2 w (16)
   none         read w: 1 (2)                           read w: 1 (2)
   ============ ======================================= ======================================

   The backward recomputes each step's clip mask from the traces that step read (one read of
   the H the next step's pass reads anyway) instead of the replay storing a mask per step.

   plus one trace checkpoint written per ``k`` = 16 steps and read back once. The flops per entry
   are the arithmetic of those loops (a fused multiply-add counted as 2). Smaller terms (the
   input and head matmuls, the env, Python) are left out of the count: the measured time
   includes them, so the achieved figures are lower bounds for the kernel alone.

    python benchmarks/roofline.py                       # cue retroactive, simple; maze simple
    python benchmarks/roofline.py --rows cue-retroactive --updates 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from train_throughput import ROWS, worker  # noqa: E402

# rule -> (acting passes, acting flops/entry, learning passes, learning flops/entry) per step
PASSES = {
    "retroactive": (6, 11, 4 + 11, 10 + 25),
    "simple": (4, 8, 2 + 8, 6 + 16),
    "hebbian": (4, 8, 2 + 8, 6 + 16),
    "none": (1, 2, 1, 2),
}
TRACES = {"retroactive": 2, "simple": 1, "hebbian": 1, "none": 0}
EPISODE_STEPS = {"bpm/CueReward-v0": 120, "bpm/PlasticMaze-v0": 200}
K = 16  # CHECKPOINT_EVERY of the kernel


def triad_gbs(n: int, reps: int) -> float:
    import torch

    b, c = torch.rand(n), torch.rand(n)
    a = torch.empty(n)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.add(b, c, alpha=1.5, out=a)
        times.append(time.perf_counter() - t0)
    return 12 * n / statistics.median(times) / 1e9


def matmul_gflops(reps: int = 10) -> float:
    import torch

    x, y = torch.rand(1024, 1024), torch.rand(1024, 1024)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(x, y)
        times.append(time.perf_counter() - t0)
    return 2 * 1024**3 / statistics.median(times) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rows", nargs="+", default=["cue-retroactive", "cue-simple", "maze-simple"], choices=list(ROWS)
    )
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    bw = {
        "L2 (3 x 64 KB)": triad_gbs(16_384, 2000),
        "L3 (3 x 2 MB)": triad_gbs(524_288, 200),
        "DRAM (3 x 128 MB)": triad_gbs(33_554_432, 5),
    }
    peak = matmul_gflops()
    print("# one thread")
    for name, v in bw.items():
        print(f"triad bandwidth, {name}: {v:.1f} GB/s")
    print(f"float32 matmul 1024^3: {peak:.1f} GFLOP/s")
    l3 = bw["L3 (3 x 2 MB)"]
    print()
    print(
        "| config | phase | N x P array passes | GB moved | GFLOP | measured s | GB/s | GFLOP/s | s at L3 bandwidth | s at matmul peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in args.rows:
        env_id, rule, n, *_ = ROWS[row]
        P = (n + 15) // 16 * 16
        entries = n * P
        T, B = EPISODE_STEPS[env_id], 30
        res = worker(row, "ours", args.updates, args.warmup, 1)
        act_p, act_f, learn_p, learn_f = PASSES[rule]
        ck = TRACES[rule] / K  # checkpoint writes (acting) and reads (replay), per step
        for phase, passes, flops, key in (
            ("act", act_p + ck, act_f, "act_s"),
            ("learn", learn_p + ck, learn_f, "learn_s"),
        ):
            gb = passes * entries * 4 * T * B / 1e9
            gflop = flops * entries * T * B / 1e9
            s = statistics.median(res[key])
            print(
                f"| {row} | {phase} | {passes:.3g} | {gb:.2f} | {gflop:.2f} | {s:.3f} | {gb / s:.1f} "
                f"| {gflop / s:.1f} | {gb / l3:.3f} | {gflop / peak:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
