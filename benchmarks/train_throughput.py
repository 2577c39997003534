"""Seconds per A2C update and peak memory of the plastic agents, fast path vs reference vs release.

An *update* here is what issue 4 times: the replay of B recorded episodes of T steps through the
policy with autograd, the backward pass, gradient clipping and the Adam step
(``A2CTrainer.learn``). The *rollout* (acting without autograd: ``A2CTrainer.collect``, env
stepping and sampling included, each step through the same implementation) is timed separately;
a training update of ``train.py`` costs their sum.

Each (configuration, implementation) runs in a fresh subprocess so that peak RSS
(``ru_maxrss``) belongs to that configuration alone. Release figures: ``shared/docs/paper.md`` §7.

    python benchmarks/train_throughput.py                      # all rows, fast and reference
    python benchmarks/train_throughput.py --rows cue-retroactive --impls fast --updates 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (env id, rule, N, release s/update, release peak RSS GB, target s/update, target RSS GB)
ROWS = {
    "cue-retroactive": ("bpm/CueReward-v0", "retroactive", 200, 1.83, 5.5, 0.20, 1.0),
    "cue-simple": ("bpm/CueReward-v0", "simple", 200, 1.38, 3.8, 0.15, None),
    "cue-hebbian": ("bpm/CueReward-v0", "hebbian", 200, None, None, None, None),
    "cue-none": ("bpm/CueReward-v0", "none", 200, 0.130, 0.33, None, None),
    "maze-simple": ("bpm/PlasticMaze-v0", "simple", 100, 0.76, 1.75, 0.08, None),
    "maze-retroactive": ("bpm/PlasticMaze-v0", "retroactive", 100, 0.95, 2.5, 0.10, None),
    "maze-hebbian": ("bpm/PlasticMaze-v0", "hebbian", 100, None, None, None, None),
    "maze-none": ("bpm/PlasticMaze-v0", "none", 100, 0.19, 0.34, None, None),
}


def _cpu_seconds() -> float:
    """CPU time of this process, all threads: less sensitive than wall time to other jobs."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(row: str, impl: str, updates: int, warmup: int, threads: int) -> dict:
    """Time ``updates`` updates (after ``warmup``) of one configuration in this process."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, ROOT)
    from bpm_agents.a2c import A2CConfig, A2CTrainer

    env_id, rule, hidden, *_ = ROWS[row]
    trainer = A2CTrainer(
        A2CConfig(env_id=env_id, rule=rule, hidden_size=hidden, batch_size=30, seed=0, unroll_impl=impl)
    )
    horizon = trainer.envs.unwrapped.task.episode_length
    replay, rollout_s, replay_cpu = [], [], []
    for i in range(warmup + updates):
        # A2CTrainer.update() is learn(collect()); the two halves are timed apart
        t0 = time.perf_counter()
        rollout = trainer.collect()
        t1, c1 = time.perf_counter(), _cpu_seconds()
        trainer.learn(rollout)
        t2, c2 = time.perf_counter(), _cpu_seconds()
        if i >= warmup:
            replay.append(t2 - t1)
            replay_cpu.append(c2 - c1)
            rollout_s.append(t1 - t0)
    return {
        "row": row, "impl": impl, "rule": rule, "N": hidden, "T": horizon, "B": 30,
        "threads": threads, "update_s": replay, "update_cpu_s": replay_cpu, "rollout_s": rollout_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def _run_subprocess(row, impl, args) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", row, impl,
        "--updates", str(args.updates), "--warmup", str(args.warmup), "--threads", str(args.threads),
    ]
    env = dict(os.environ)
    if args.omp_wait_policy != "default":
        # read by libgomp when torch loads, hence set for the fresh worker process
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {row}/{impl} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(x, spec=".3f", none="n/a"):
    return none if x is None else format(x, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list from: {', '.join(ROWS)}")
    parser.add_argument("--impls", default="fast,reference", help="comma list of unroll impls")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--omp-wait-policy", choices=("passive", "active", "default"), default="passive",
        help="OMP_WAIT_POLICY of the workers. passive (default): idle OpenMP threads sleep instead "
        "of spinning, which on a CPU shared with other jobs is the difference between 0.7 s and "
        "30 s per rollout with 2 threads; default: leave the environment as it is",
    )
    parser.add_argument("--json", help="write all measurements to this file")
    parser.add_argument("--worker", nargs=2, metavar=("ROW", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(*args.worker, args.updates, args.warmup, args.threads)))
        return 0
    rows = [r for r in args.rows.split(",") if r]
    impls = [i for i in args.impls.split(",") if i]
    bad = [r for r in rows if r not in ROWS] + [i for i in impls if i not in ("fast", "reference")]
    if bad or args.updates < 1 or args.warmup < 0 or args.threads < 1:
        parser.error(f"bad arguments: {bad or 'updates/warmup/threads'}")

    print(f"# threads={args.threads} OMP_WAIT_POLICY={args.omp_wait_policy} updates={args.updates} "
          f"warmup={args.warmup}; median and min over the timed updates", flush=True)
    results = []
    for row in rows:
        for impl in impls:
            res = _run_subprocess(row, impl, args)
            results.append(res)
            print(
                f"# {row:17s} {impl:9s} update median {statistics.median(res['update_s']):.3f} s "
                f"(min {min(res['update_s']):.3f}), rollout median "
                f"{statistics.median(res['rollout_s']):.3f} s, peak RSS {res['peak_rss_gb']:.2f} GB",
                flush=True,
            )
    print()
    print(
        "| config | N | T | impl | update s (median / min) | update CPU s | env steps/s "
        "| rollout s (median) "
        "| peak RSS GB | release s | x faster than release | x faster than our reference "
        "| target s | met |"
    )
    print("|---" * 14 + "|")
    ref = {r["row"]: statistics.median(r["update_s"]) for r in results if r["impl"] == "reference"}
    for res in results:
        _, _, _, rel_s, rel_gb, target_s, target_gb = ROWS[res["row"]]
        med, best = statistics.median(res["update_s"]), min(res["update_s"])
        steps = res["B"] * res["T"] / med
        vs_rel = rel_s / med if rel_s else None
        vs_ref = ref[res["row"]] / med if res["row"] in ref else None
        met = None
        if target_s is not None:
            met = med <= target_s and (target_gb is None or res["peak_rss_gb"] <= target_gb)
        rollout_txt = f"{statistics.median(res['rollout_s']):.3f}"
        print(
            f"| {res['row']} | {res['N']} | {res['T']} | {res['impl']} | {med:.3f} / {best:.3f} "
            f"| {statistics.median(res['update_cpu_s']):.3f} | {steps:,.0f} | {rollout_txt} | {res['peak_rss_gb']:.2f} "
            f"| {_fmt(rel_s)} ({_fmt(rel_gb, '.2f')} GB) | {_fmt(vs_rel, '.1f')} "
            f"| {_fmt(vs_ref, '.1f')} | {_fmt(target_s, '.2f')}"
            f"{'' if target_gb is None else f', {target_gb} GB'} | "
            f"{'n/a' if met is None else ('yes' if met else 'no')} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
