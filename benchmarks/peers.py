#!/usr/bin/env python
"""Peer baselines: our plastic A2C vs SB3 PPO (feed-forward) and sb3-contrib RecurrentPPO (LSTM).

Every agent gets the same budget of environment steps on each task, for several seeds:

- ``plastic-simple`` / ``plastic-retroactive``: our A2C (paper defaults: 30 lock-step episodes
  per update, one gradient step per update; :mod:`bpm_agents.a2c`);
- ``recurrent-ppo``: RecurrentPPO-LSTM whose LSTM width is chosen so that its parameter count
  is the closest to our retroactive agent's on that task;
- ``ppo``: feed-forward PPO (SB3 defaults, 64-64 MLPs).

SB3 agents use 8 envs and ``n_steps`` = the episode length, so each update sees whole episodes
and the budget is a whole number of updates for every agent. RecurrentPPO uses the whole rollout
as its minibatch: sb3-contrib falls back to a Python loop over time steps whenever a sequence holds
an episode start, which makes its default 128-step minibatches ~6x slower on CPU.

Reported per agent and task: final reward (mean episode reward over the last 20% of the budget,
averaged over seeds, with a 95% t-interval across seeds), the same over the first 20%, wall time
per run and env steps per second; a uniform-random policy measured in the same run is the floor.
Results go to ``--out-dir``: ``peers.json`` (all curves, written after every run; ``--resume``
skips runs already there), ``peers.png`` (learning curves) and ``peers.md`` (the table).

Example (the budget used for benchmarks/results/peers.md)::

    python benchmarks/peers.py --seeds 0 1 2 --budget-cue 57600 --budget-maze 96000
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bpm_agents.a2c import A2CConfig, A2CTrainer  # noqa: E402
from bpm_agents.sb3 import (  # noqa: E402
    NativeVecEnv,
    SB3Config,
    _RolloutStats,
    build_model,
    count_parameters,
    make_sb3_vec_env,
)

TASKS = {"cue": "bpm/CueReward-v0", "maze": "bpm/PlasticMaze-v0"}
AGENTS = ("plastic-simple", "plastic-retroactive", "recurrent-ppo", "ppo")
SB3_ENVS = 8
#: fraction of the budget whose episodes give the "initial" and "final" rewards
WINDOW = 0.2
#: two-sided 95% Student-t quantiles by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def episode_length(env_id: str) -> int:
    env = NativeVecEnv(env_id, 1)
    length = env.episode_length
    env.close()
    return length


def plastic_param_count(env_id: str, rule: str) -> int:
    trainer = A2CTrainer(A2CConfig(env_id=env_id, rule=rule, batch_size=1))
    return sum(p.numel() for p in trainer.policy.parameters())


def sb3_config(agent: str, env_id: str, seed: int, lstm_hidden: int | None = None) -> SB3Config:
    n_steps = episode_length(env_id)
    if agent == "ppo":
        return SB3Config(algo="ppo", env_id=env_id, seed=seed, n_envs=SB3_ENVS, n_steps=n_steps).resolve()
    return SB3Config(
        algo="recurrent-ppo",
        env_id=env_id,
        seed=seed,
        n_envs=SB3_ENVS,
        n_steps=n_steps,
        lstm_hidden_size=lstm_hidden,
        minibatch_size=SB3_ENVS * n_steps,
    ).resolve()


def matched_lstm_size(env_id: str, target: int) -> tuple[int, int]:
    """LSTM width whose RecurrentPPO policy has the parameter count closest to ``target``."""

    def count(h: int) -> int:
        cfg = sb3_config("recurrent-ppo", env_id, 0, h)
        venv = make_sb3_vec_env(env_id, cfg.n_envs, 0)
        n = count_parameters(build_model(cfg, venv))
        venv.close()
        return n

    lo, hi = 1, 512  # count(h) grows with h: find the first h with count >= target
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min((lo - 1, lo), key=lambda h: abs(count(h) - target) if h >= 1 else math.inf)
    return best, count(best)


def run_plastic(rule: str, env_id: str, seed: int, budget: int) -> dict[str, Any]:
    trainer = A2CTrainer(A2CConfig(env_id=env_id, rule=rule, seed=seed))
    per_update = trainer.config.batch_size * episode_length(env_id)
    if budget % per_update:
        raise ValueError(f"budget {budget} is not a multiple of our A2C's {per_update} steps per update")
    steps, rewards = [], []
    start = time.perf_counter()
    for _ in range(budget // per_update):
        metrics = trainer.update()
        steps.append(trainer.updates_done * per_update)
        rewards.append(metrics["reward_mean"])
    wall = time.perf_counter() - start
    params = sum(p.numel() for p in trainer.policy.parameters())
    return dict(steps=steps, rewards=rewards, wall=wall, env_steps=steps[-1], params=params)


def run_sb3(agent: str, env_id: str, seed: int, budget: int, lstm_hidden: int | None) -> dict[str, Any]:
    cfg = sb3_config(agent, env_id, seed, lstm_hidden)
    if budget % cfg.steps_per_update:
        raise ValueError(
            f"budget {budget} is not a multiple of {agent}'s {cfg.steps_per_update} steps per update"
        )
    venv = make_sb3_vec_env(env_id, cfg.n_envs, seed)
    model = build_model(cfg, venv)
    stats = _RolloutStats(cfg.n_envs)
    steps, rewards = [], []
    start = time.perf_counter()
    for _ in range(budget // cfg.steps_per_update):
        model.learn(cfg.steps_per_update, callback=stats, log_interval=None, reset_num_timesteps=False)
        returns = stats.pop_returns()
        steps.append(int(model.num_timesteps))
        rewards.append(float(returns.mean()) if len(returns) else math.nan)
    wall = time.perf_counter() - start
    venv.close()
    return dict(steps=steps, rewards=rewards, wall=wall, env_steps=steps[-1], params=count_parameters(model))


def run_random(env_id: str, seed: int, episodes: int = 240) -> float:
    """Mean episode reward of uniformly random actions over ``episodes`` episodes."""
    env = NativeVecEnv(env_id, episodes)
    env.seed(seed)
    env.reset()
    rng = np.random.default_rng(seed)
    total = np.zeros(episodes)
    for _ in range(env.episode_length):
        _, r, _, _ = env.step(rng.integers(0, env.action_space.n, size=episodes))
        total += r
    env.close()
    return float(total.mean())


def env_speed(steps: int = 2000) -> list[str]:
    """Env steps/s of SB3's DummyVecEnv of single envs vs our NativeVecEnv adapter, random actions."""
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    lines = []
    for task, env_id in TASKS.items():
        for n in (8, 32):
            rate = {}
            for name in ("native", "dummy"):
                venv = (
                    NativeVecEnv(env_id, n)
                    if name == "native"
                    else DummyVecEnv([lambda: gym.make(env_id)] * n)
                )
                venv.seed(0)
                venv.reset()
                actions = np.random.default_rng(0).integers(0, venv.action_space.n, size=(steps, n))
                start = time.perf_counter()
                for a in actions:
                    venv.step(a)
                rate[name] = steps * n / (time.perf_counter() - start)
                venv.close()
            lines.append(
                f"{task} n_envs={n}: NativeVecEnv {rate['native']:.0f} steps/s, DummyVecEnv "
                f"{rate['dummy']:.0f} steps/s, ratio {rate['native'] / rate['dummy']:.1f}x"
            )
    return lines


def window_mean(run: dict[str, Any], budget: int, final: bool) -> float:
    steps = np.asarray(run["steps"])
    rewards = np.asarray(run["rewards"], dtype=float)
    # an update's reward belongs to the window holding its last step
    mask = steps > (1 - WINDOW) * budget if final else steps <= WINDOW * budget + 1e-9
    if not mask.any():  # budget shorter than one update per window: use the nearest update
        mask = np.zeros_like(mask)
        mask[-1 if final else 0] = True
    return float(np.nanmean(rewards[mask]))


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and 95% t half-width across seeds (nan half-width for one seed)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / math.sqrt(len(v)))


def plot(results: dict[str, Any], budgets: dict[str, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if t in results["runs"]]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        budget = budgets[task]
        edges = np.linspace(0, budget, 11)
        centers = (edges[:-1] + edges[1:]) / 2
        for agent, runs in results["runs"][task].items():
            curves = []
            for run in runs.values():
                steps, rew = np.asarray(run["steps"]), np.asarray(run["rewards"], dtype=float)
                idx = np.clip(np.searchsorted(edges, steps, side="left") - 1, 0, 9)
                curves.append([np.nanmean(rew[idx == b]) if (idx == b).any() else np.nan for b in range(10)])
            arr = np.asarray(curves)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # bins without a finished episode
                mean = np.nanmean(arr, axis=0)
                low, high = np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
            ax.plot(centers, mean, marker="o", label=f"{agent} ({len(runs)} seeds)")
            if len(runs) > 1:
                ax.fill_between(centers, low, high, alpha=0.2)
        if task in results["random"]:
            ax.axhline(
                np.mean(list(results["random"][task].values())), color="gray", ls="--", label="uniform random"
            )
        ax.set_title(f"{TASKS[task]} ({budget} env steps)")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("mean episode reward (band: min-max over seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(results: dict[str, Any], budgets: dict[str, int]) -> str:
    lines = [
        "| task | agent | params | seeds | initial reward (first 20%) | final reward (last 20%) | wall s / run | env steps / s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, agents in results["runs"].items():
        budget = budgets[task]
        for agent, runs in agents.items():
            finals = [window_mean(r, budget, True) for r in runs.values()]
            initials = [window_mean(r, budget, False) for r in runs.values()]
            walls = [r["wall"] for r in runs.values()]
            sps = [r["env_steps"] / r["wall"] for r in runs.values()]
            fm, fh = interval(finals)
            im, ih = interval(initials)
            params = next(iter(runs.values()))["params"]
            lines.append(
                f"| {task} | {agent} | {params} | {len(runs)} | {im:.2f} ± {ih:.2f} | "
                f"{fm:.2f} ± {fh:.2f} | {np.mean(walls):.0f} | {np.mean(sps):.0f} |"
            )
        if task in results["random"]:
            vals = list(results["random"][task].values())
            m, h = interval(vals)
            lines.append(
                f"| {task} | uniform random | 0 | {len(vals)} | {m:.2f} ± {h:.2f} | {m:.2f} ± {h:.2f} | - | - |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--budget-cue",
        type=int,
        default=57600,
        help="env steps per run on the cue task (multiple of 14400 = lcm(3600, 960))",
    )
    p.add_argument(
        "--budget-maze",
        type=int,
        default=96000,
        help="env steps per run on the maze (multiple of 24000 = lcm(6000, 1600))",
    )
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--agents", nargs="+", default=list(AGENTS), choices=list(AGENTS))
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--resume", action="store_true", help="keep the runs already in peers.json")
    p.add_argument(
        "--env-speed",
        action="store_true",
        help="only compare env stepping: NativeVecEnv vs SB3's DummyVecEnv",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.env_speed:
        print("\n".join(env_speed()))
        return 0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "peers.json"
    budgets = {"cue": args.budget_cue, "maze": args.budget_maze}
    command = "python benchmarks/peers.py " + " ".join(sys.argv[1:] if argv is None else argv)

    results: dict[str, Any] = {"runs": {}, "random": {}, "lstm_hidden": {}, "budgets": budgets}
    if args.resume and json_path.exists():
        results = json.loads(json_path.read_text())
        if results["budgets"] != budgets:
            print(
                f"peers.py: error: {json_path} holds budgets {results['budgets']}, not {budgets}",
                file=sys.stderr,
            )
            return 2
    results["command"] = command

    def save() -> None:
        json_path.write_text(json.dumps(results))

    for task in args.tasks:
        env_id = TASKS[task]
        if "recurrent-ppo" in args.agents and task not in results["lstm_hidden"]:
            target = plastic_param_count(env_id, "retroactive")
            h, n = matched_lstm_size(env_id, target)
            results["lstm_hidden"][task] = [h, n, target]
            print(
                f"{task}: RecurrentPPO LSTM width {h} -> {n} parameters (retroactive agent: {target})",
                flush=True,
            )
    total_start = time.perf_counter()
    for seed in args.seeds:
        for task in args.tasks:
            env_id, budget = TASKS[task], budgets[task]
            results["random"].setdefault(task, {})[str(seed)] = run_random(env_id, seed)
            for agent in args.agents:
                runs = results["runs"].setdefault(task, {}).setdefault(agent, {})
                if str(seed) in runs:
                    continue
                if agent.startswith("plastic-"):
                    run = run_plastic(agent.removeprefix("plastic-"), env_id, seed, budget)
                else:
                    lstm = results["lstm_hidden"][task][0] if agent == "recurrent-ppo" else None
                    run = run_sb3(agent, env_id, seed, budget, lstm)
                runs[str(seed)] = run
                save()
                print(
                    f"seed {seed} {task:4s} {agent:20s} final {window_mean(run, budget, True):7.3f} "
                    f"wall {run['wall']:6.1f} s  {run['env_steps'] / run['wall']:6.0f} steps/s  "
                    f"(elapsed {time.perf_counter() - total_start:.0f} s)",
                    flush=True,
                )
    plot(results, budgets, out / "peers.png")
    text = table(results, budgets)
    print(text)
    md = [
        "# Peer baselines on the bpm tasks (generated by benchmarks/peers.py)",
        "",
        f"Command: `{command}`",
        "",
        f"Budgets: {budgets['cue']} env steps per run on bpm/CueReward-v0, {budgets['maze']} on "
        f"bpm/PlasticMaze-v0; seeds {args.seeds}; torch threads {args.threads}; "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}.",
        f"RecurrentPPO LSTM widths (width, params, retroactive params): {results['lstm_hidden']}.",
        "",
        "Rewards: mean episode reward of the training episodes in the first / last 20% of the budget, "
        "mean over seeds ± 95% t-interval half-width. Curves: peers.png.",
        "",
        text,
        "",
    ]
    (out / "peers.md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
