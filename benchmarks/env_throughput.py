"""Env steps per second: the native batched vector env against Gymnasium's SyncVectorEnv.

Sync is ``gym.make_vec(id, num_envs=N, vectorization_mode="sync")``: N single envs made by
``gym.make`` (with its default wrappers), stepped in a Python loop. Both run the same task with the
same pre-drawn random actions (seeded generator), timed over a fixed number of vector steps after a
warm-up; autoresets happen inside the timed loop, as in training. Native and Sync runs alternate
(so both see the same machine load), ``--repeats`` times each; the table shows medians (the ratio
is the median of the per-repeat ratios). Target: the native maze vector env is at least 20x
SyncVectorEnv at 30 envs.

    python benchmarks/env_throughput.py --num-envs 30 --steps 2000
    python benchmarks/env_throughput.py --profile      # also cProfile the native envs
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

# Runs from a plain checkout too (the package need not be installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bpm_envs  # noqa: E402

TARGET_RATIO = 20.0
TARGET_ID = "bpm/PlasticMaze-v0"


def time_steps(venv: gym.vector.VectorEnv, actions: np.ndarray, warmup: int, seed: int) -> float:
    """Seconds for ``len(actions) - warmup`` vector steps after ``warmup`` untimed ones."""
    venv.reset(seed=seed)
    for a in actions[:warmup]:
        venv.step(a)
    start = time.perf_counter()
    for a in actions[warmup:]:
        venv.step(a)
    return time.perf_counter() - start


def measure(
    env_id: str, num_envs: int, steps: int, warmup: int, repeats: int, seed: int
) -> tuple[float, float, float]:
    """Median env steps/s of the native and the Sync vector env, and the median of their ratios.

    The two are timed alternately, ``repeats`` times each, so that both see the same machine load;
    env steps/s = vector steps x num_envs / seconds.
    """
    native = gym.make_vec(env_id, num_envs=num_envs)
    sync = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    n_actions = int(native.single_action_space.n)
    actions = np.random.default_rng(seed).integers(0, n_actions, size=(warmup + steps, num_envs))
    native_rates, sync_rates = [], []
    for _ in range(repeats):
        native_rates.append(steps * num_envs / time_steps(native, actions, warmup, seed))
        sync_rates.append(steps * num_envs / time_steps(sync, actions, warmup, seed))
    native.close()
    sync.close()
    ratios = [n / s for n, s in zip(native_rates, sync_rates)]
    return (statistics.median(native_rates), statistics.median(sync_rates), statistics.median(ratios))


def profile_native(env_id: str, num_envs: int, steps: int, seed: int, top: int = 18) -> str:
    venv = gym.make_vec(env_id, num_envs=num_envs)
    n_actions = int(venv.single_action_space.n)
    actions = np.random.default_rng(seed).integers(0, n_actions, size=(steps, num_envs))
    venv.reset(seed=seed)
    profiler = cProfile.Profile()
    profiler.enable()
    for a in actions:
        venv.step(a)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=30, help="envs per vector env (30)")
    parser.add_argument("--steps", type=int, default=2000, help="timed vector steps (2000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed vector steps first (200)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs each; medians shown")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile the native envs too")
    args = parser.parse_args(argv)
    for name in ("num_envs", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")

    print(
        f"num_envs={args.num_envs} steps={args.steps} warmup={args.warmup} "
        f"repeats={args.repeats} (median), random actions seed={args.seed}"
    )
    header = f"{'task':<22}{'native steps/s':>16}{'Sync steps/s':>16}{'native/Sync':>13}"
    print(header)
    print("-" * len(header))
    ratios = {}
    for env_id in bpm_envs.ENV_IDS:
        native, sync, ratios[env_id] = measure(
            env_id, args.num_envs, args.steps, args.warmup, args.repeats, args.seed
        )
        print(f"{env_id:<22}{native:>16,.0f}{sync:>16,.0f}{ratios[env_id]:>12.1f}x")
    verdict = "meets" if ratios[TARGET_ID] >= TARGET_RATIO else "is BELOW"
    print(
        f"\n{TARGET_ID} native/Sync = {ratios[TARGET_ID]:.1f}x {verdict} the target of "
        f"{TARGET_RATIO:.0f}x (at num_envs={args.num_envs})"
    )
    if args.profile:
        for env_id in bpm_envs.ENV_IDS:
            print(f"\n=== cProfile, native {env_id}, {args.steps} steps ===")
            print(profile_native(env_id, args.num_envs, args.steps, args.seed))


if __name__ == "__main__":
    main()
