#!/usr/bin/env python
"""Learners at the same budget of environment steps (issue 16): who reaches what, and when.

Learners, each trained into an ordinary run folder ``OUT/<task>/<learner>/seed<k>`` (the one
``train.py`` writes: resumable, evaluable), so a comparison that takes several sessions continues
where it stopped (rerun the same command; finished runs are skipped):

- ``plastic-a2c``: our plastic A2C with the paper's protocol (``simple`` rule, task defaults);
- ``plastic-ppo``: plastic PPO at its defaults (``simple`` rule, same network);
- ``plastic-ppo-tuned``: plastic PPO with the built-in ``ppo-tuned`` protocol (issue 29: step
  minibatches over whole-episode replays, detached value head; ``simple`` rule, same network);
- ``ppo``: Stable-Baselines3 PPO, feed-forward MLP (SB3 defaults, 8 envs, ``n_steps`` = episode);
- ``recurrent-ppo``: sb3-contrib RecurrentPPO (LSTM) with the parameter count of our agent;
- ``random``: the uniform-random policy (measured, not trained).

Everything is read back from the folders' ``progress.csv`` (``env_steps``, ``wall_time``,
``reward_mean``), so the report can also be rebuilt alone (``--report-only``). It gives, per task:

- curves of the per-update reward (moving average over ``--smooth`` updates), median and
  inter-quartile band across seeds, against env steps and against wall-clock seconds;
- the final reward (mean over the last 10% of the budget) with a 95% t-interval across seeds;
- when each learner reached each threshold: the first grid point (of 100 over the budget) from which
  the seed median stays at or above it for ``--hold`` points (or to the end of the budget), in env
  steps and seconds, and how many seeds reached it by the same rule;
- seconds per update (median) and env steps per second.

Wall-clock is only comparable between runs that shared the machine the same way: the report says
how many ran at a time (``--workers``), and every run uses one torch thread.

Example (the budget of benchmarks/results/same_budget/)::

    python benchmarks/same_budget.py --out runs/same-budget --seeds 0 1 2 --budget-maze 2400000 \\
        --budget-cue 1440000 --workers 2 --results benchmarks/results/same_budget
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = {"maze": "bpm/PlasticMaze-v0", "cue": "bpm/CueReward-v0"}
LEARNERS = ("plastic-a2c", "plastic-ppo", "plastic-ppo-tuned", "ppo", "recurrent-ppo")
RULE = "simple"
SB3_ENVS = 8
#: reward thresholds whose first held crossing is reported (maze: random walk 7.75; cue: chance 0)
THRESHOLDS = {"maze": (15.0, 30.0, 45.0, 60.0), "cue": (0.5, 1.0, 2.0, 5.0)}
FINAL_WINDOW = 0.1
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


# ---------------------------------------------------------------- configs


def episode_length(env_id: str) -> int:
    from bpm_agents.sb3 import NativeVecEnv

    env = NativeVecEnv(env_id, 1)
    n = env.episode_length
    env.close()
    return n


def plastic_config(learner: str, env_id: str, seed: int) -> Any:
    from bpm_agents.a2c import A2CConfig
    from bpm_agents.ppo import PPOConfig

    if learner == "plastic-ppo-tuned":  # the built-in ppo-tuned protocol, as sweeps apply it
        from bpm_agents.experiments.definitions import ALGO_KEY, PPO_TUNED

        tuned = {k: v for k, v in PPO_TUNED.items() if k != ALGO_KEY}
        return PPOConfig(env_id=env_id, rule=RULE, seed=seed, **tuned).resolve()
    cls = PPOConfig if learner == "plastic-ppo" else A2CConfig
    return cls(env_id=env_id, rule=RULE, seed=seed).resolve()


def sb3_config(learner: str, env_id: str, seed: int, lstm_hidden: int | None = None) -> Any:
    from bpm_agents.sb3 import SB3Config

    n_steps = episode_length(env_id)
    if learner == "ppo":
        return SB3Config(algo="ppo", env_id=env_id, seed=seed, n_envs=SB3_ENVS, n_steps=n_steps).resolve()
    # the whole rollout as one minibatch: sb3-contrib falls back to a per-step Python loop on
    # sequences that hold an episode start, which makes small minibatches ~6x slower on CPU
    return SB3Config(
        algo="recurrent-ppo", env_id=env_id, seed=seed, n_envs=SB3_ENVS, n_steps=n_steps,
        lstm_hidden_size=lstm_hidden, minibatch_size=SB3_ENVS * n_steps,
    ).resolve()  # fmt: skip


def random_level(task: str) -> float:
    """The uniform-random policy's expected episode reward: the maze's measured level
    (``benchmarks/maze_levels.py``, 100,000 episodes), the cue task's exact 0 (every graded answer is
    +1 or -1 with probability 1/2)."""
    from bpm_agents.experiments.definitions import MAZE_LEVELS

    return MAZE_LEVELS[9]["random walk"] if task == "maze" else 0.0


def lstm_policy_params(env_id: str, width: int) -> int:
    """Parameters of the RecurrentPPO policy with an LSTM of ``width`` units."""
    from bpm_agents.sb3 import build_model, count_parameters, make_sb3_vec_env

    venv = make_sb3_vec_env(env_id, 1, 0)
    n = count_parameters(build_model(sb3_config("recurrent-ppo", env_id, 0, width), venv))
    venv.close()
    return n


def plastic_params(env_id: str) -> int:
    from bpm_agents.a2c import A2CConfig, A2CTrainer

    trainer = A2CTrainer(A2CConfig(env_id=env_id, rule=RULE, batch_size=1))
    return sum(p.numel() for p in trainer.policy.parameters())


def matched_lstm_width(env_id: str, target: int) -> int:
    """The RecurrentPPO LSTM width whose policy's parameter count is closest to ``target``."""

    def count(h: int) -> int:
        return lstm_policy_params(env_id, h)

    lo, hi = 1, 512
    while lo < hi:  # the first width with count >= target
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if count(mid) >= target else (mid + 1, hi)
    return min((h for h in (lo - 1, lo) if h >= 1), key=lambda h: abs(count(h) - target))


def steps_per_update(learner: str, env_id: str) -> int:
    if learner.startswith("plastic-"):
        return plastic_config(learner, env_id, 0).batch_size * episode_length(env_id)
    return SB3_ENVS * episode_length(env_id)


# ---------------------------------------------------------------- one run (in a worker)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or continue) one run folder to its budget of env steps; return how it ended.

    ``job``: ``task``, ``learner``, ``seed``, ``budget`` (env steps), ``run_dir``, ``lstm`` (the
    RecurrentPPO width or None) and ``condition`` (for the pool's reports)."""
    import torch

    torch.set_num_threads(1)
    task, learner, seed, budget, run_dir, lstm = (
        job[k] for k in ("task", "learner", "seed", "budget", "run_dir", "lstm")
    )
    env_id = TASKS[task]
    updates = budget // steps_per_update(learner, env_id)
    resume = (Path(run_dir) / "config.json").exists()
    start = time.perf_counter()
    if learner.startswith("plastic-"):
        from bpm_agents.training import train

        config = None if resume else plastic_config(learner, env_id, seed)
        result = train(
            config, run_dir, updates, resume=resume, checkpoint_every=25, progress=False, tensorboard=False
        )
    else:
        from bpm_agents import sb3

        config = None if resume else sb3_config(learner, env_id, seed, lstm)
        result = sb3.train(
            config, run_dir, updates, resume=resume, checkpoint_every=10, progress=False, tensorboard=False
        )
    return {"condition": job["condition"], "seed": seed, "updates_done": result.updates_done, "target": updates,
            "status": "interrupted" if result.interrupted else "done", "message": "",
            "seconds": time.perf_counter() - start}  # fmt: skip


class _Log:
    """The pool's progress sink: one line per message on stdout."""

    def tick(self) -> None:
        pass

    def message(self, text: str) -> None:
        print(text, flush=True)


def _record(outcome: dict[str, Any]) -> None:
    line = f"{outcome['condition']:22s} seed {outcome['seed']}: {outcome['status']}"
    if "target" in outcome:
        line += (
            f", {outcome['updates_done']}/{outcome['target']} updates ({outcome['seconds']:.0f} s this call)"
        )
    print(line + (f" ({outcome['message']})" if outcome.get("message") else ""), flush=True)
    if outcome.get("traceback"):
        print(outcome["traceback"], file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the report


def read_curve(run_dir: Path) -> dict[str, np.ndarray] | None:
    path = run_dir / "progress.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None

    def col(name: str) -> np.ndarray:
        return np.asarray([float(r[name]) if r[name] not in ("", None) else math.nan for r in rows])

    return {"steps": col("env_steps"), "wall": col("wall_time"), "reward": col("reward_mean")}


def smooth(x: np.ndarray, k: int) -> np.ndarray:
    """Trailing moving average over up to ``k`` updates (NaNs, updates with no finished episode, skipped)."""
    out = np.full(len(x), math.nan)
    for i in range(len(x)):
        window = x[max(0, i - k + 1) : i + 1]
        if np.isfinite(window).any():
            out[i] = np.nanmean(window)
    return out


def on_grid(xs: np.ndarray, ys: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``ys`` (given at increasing ``xs``) at each grid point: the last value at or before it."""
    idx = np.searchsorted(xs, grid, side="right") - 1
    out = np.where(idx >= 0, ys[np.clip(idx, 0, len(ys) - 1)], math.nan)
    out[grid > xs[-1]] = math.nan  # past the end of a shorter run
    return out


def interval(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / math.sqrt(len(v)))


def first_held(values: np.ndarray, threshold: float, hold: int) -> int | None:
    """The first index from which ``values`` stay >= ``threshold`` for ``hold`` points (or to the
    end, where fewer remain); None if there is none. NaN counts as below."""
    above = np.nan_to_num(values, nan=-math.inf) >= threshold
    for i in np.nonzero(above)[0]:
        if above[i : i + hold].all():
            return int(i)
    return None


def summarise(out: Path, tasks: list[str], learners: list[str], seeds: list[int], budgets: dict[str, int],
              smooth_k: int, hold: int = 10) -> dict[str, Any]:  # fmt: skip
    summary: dict[str, Any] = {}
    for task in tasks:
        budget = budgets[task]
        grid = np.linspace(budget / 100, budget, 100)
        per: dict[str, Any] = {}
        for learner in learners:
            curves = {s: read_curve(out / task / learner / f"seed{s}") for s in seeds}
            curves = {s: c for s, c in curves.items() if c is not None}
            if not curves:
                continue
            sm = {s: smooth(c["reward"], smooth_k) for s, c in curves.items()}
            by_steps = np.asarray([on_grid(c["steps"], sm[s], grid) for s, c in curves.items()])
            # the wall-clock median stops where the shortest seed ends, so every point is over all seeds
            wall_max = min(float(c["wall"][-1]) for c in curves.values())
            wgrid = np.linspace(wall_max / 100, wall_max, 100)
            by_wall = np.asarray([on_grid(c["wall"], sm[s], wgrid) for s, c in curves.items()])
            finals, reached_steps = [], []
            for c in curves.values():
                done = c["steps"][-1] >= budget
                last = c["steps"] > (1 - FINAL_WINDOW) * budget
                finals.append(float(np.nanmean(c["reward"][last])) if done and last.any() else math.nan)
                reached_steps.append(float(c["steps"][-1]))
            with np.errstate(all="ignore"), warnings.catch_warnings():  # all-NaN columns: no seed there yet
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(by_steps, axis=0)
                q1, q3 = np.nanpercentile(by_steps, 25, axis=0), np.nanpercentile(by_steps, 75, axis=0)
                wmed = np.nanmedian(by_wall, axis=0)
                wq1, wq3 = np.nanpercentile(by_wall, 25, axis=0), np.nanpercentile(by_wall, 75, axis=0)
                # first crossing of each threshold by the seed median, in env steps and in seconds
                walls_on_grid = np.nanmedian(
                    np.asarray([on_grid(c["steps"], c["wall"], grid) for c in curves.values()]), axis=0
                )
            crossings = {}
            for th in THRESHOLDS[task]:
                i = first_held(med, th, hold)
                seeds_reached = sum(first_held(row, th, hold) is not None for row in by_steps)
                crossings[str(th)] = {"env_steps": None if i is None else float(grid[i]),
                                      "points_held": 0 if i is None else min(hold, len(grid) - i),
                                      "seconds": None if i is None else float(walls_on_grid[i]),
                                      "seeds_reached": seeds_reached}  # fmt: skip
            sec_per_update = [
                float(np.median(np.diff(np.concatenate([[0.0], c["wall"]])))) for c in curves.values()
            ]
            sps = [float(c["steps"][-1] / c["wall"][-1]) for c in curves.values() if c["wall"][-1] > 0]
            fm, fh = interval(finals)
            per[learner] = {
                "seeds": sorted(curves), "env_steps_done": reached_steps, "final": finals, "final_mean": fm,
                "final_ci95": fh, "crossings": crossings, "seconds_per_update": float(np.median(sec_per_update)),
                "env_steps_per_s": float(np.median(sps)) if sps else math.nan,
                "grid_steps": grid.tolist(), "median": med.tolist(), "q1": q1.tolist(), "q3": q3.tolist(),
                "grid_wall": wgrid.tolist(), "wall_median": wmed.tolist(), "wall_q1": wq1.tolist(),
                "wall_q3": wq3.tolist(),
            }  # fmt: skip
        summary[task] = per
    return summary


def plot(summary: dict[str, Any], randoms: dict[str, float], budgets: dict[str, int], path: Path) -> None:
    """Median / IQR curves against env steps and wall-clock (each cut at its shortest seed's end)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(summary)
    fig = Figure(figsize=(14, 4 * len(tasks)))
    FigureCanvasAgg(fig)
    for row, task in enumerate(tasks):
        for colno, (x, med, q1, q3, label) in enumerate(
            [("grid_steps", "median", "q1", "q3", "environment steps"),
             ("grid_wall", "wall_median", "wall_q1", "wall_q3", "wall-clock seconds (one thread per run)")]
        ):  # fmt: skip
            ax = fig.add_subplot(len(tasks), 2, 2 * row + colno + 1)
            for learner, s in summary[task].items():
                line = ax.plot(s[x], s[med], label=f"{learner} (n={len(s['seeds'])})")[0]
                ax.fill_between(s[x], s[q1], s[q3], color=line.get_color(), alpha=0.2)
            if task in randoms:
                ax.axhline(randoms[task], color="gray", ls="--", label="uniform random")
            ax.set_xlabel(label if colno == 0 else label + ", to the shortest seed's end")
            ax.set_ylabel("episode reward (median, IQR band)")
            ax.set_title(f"{TASKS[task]}, {budgets[task]:,} env steps per run")
            if colno == 1:  # one legend per row, outside the axes, off the data
                ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(summary: dict[str, Any], randoms: dict[str, float], meta: dict[str, Any]) -> str:
    lines = ["# Same-budget comparison of learners (generated by benchmarks/same_budget.py)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in meta["commands"]), "",
             f"Budgets (env steps per run): {meta['budgets']}; seeds {meta['seeds']}; each command ran its "
             f"--workers runs at a time, one torch thread each; {meta['machine']}.", "",
             "RecurrentPPO's LSTM is sized to our plastic agent's parameter count: "
             + "; ".join(f"{t}: width {w}, {n:,} policy parameters against the plastic agent's {target:,}"
                         for t, (w, target, n) in meta["lstm_params"].items()) + ".", "",
             "Final: mean training-episode reward over the last 10% of the budget, mean over seeds ± 95% t "
             "half-width (only runs that reached the budget). Reached: the first of 100 evenly spaced "
             f"points of the budget from which the seed median of the {meta['smooth']}-update moving "
             f"average stays at or above the threshold for {meta['hold']} points ({meta['hold']}% of the "
             "budget) or to its end, with the seconds of the seed median there; k/n: the seeds whose own "
             "curve reaches it by the same rule.", ""]  # fmt: skip
    for task, per in summary.items():
        ths = THRESHOLDS[task]
        lines += [f"## {TASKS[task]} (uniform random: {randoms.get(task, math.nan):.2f})", "",
                  "| learner | seeds | env steps done (per seed) | final | s / update | env steps / s | "
                  + " | ".join(f"reached {t:g}" for t in ths) + " |",
                  "|---|---|---|---|---|---|" + "---|" * len(ths)]  # fmt: skip
        for learner, s in per.items():
            cross = []
            for t in ths:
                c = s["crossings"][str(t)]
                k = f"{c['seeds_reached']}/{len(s['seeds'])} seeds"
                cross.append(
                    f"not reached ({k})"
                    if c["env_steps"] is None
                    else f"{c['env_steps'] / 1e6:.2f}M steps, {c['seconds'] / 60:.0f} min ({k})"
                )
                if c["env_steps"] is not None and c["points_held"] < meta["hold"]:
                    cross[-1] += f", held over the last {c['points_held']} points only"
            done = ", ".join(f"{x / 1e6:.2f}M" for x in s["env_steps_done"])
            lines.append(f"| {learner} | {len(s['seeds'])} | {done} | {s['final_mean']:.2f} ± {s['final_ci95']:.2f} | "
                         f"{s['seconds_per_update']:.2f} | {s['env_steps_per_s']:.0f} | " + " | ".join(cross) + " |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", required=True, help="folder of the run folders (reruns continue them)")
    p.add_argument("--results", default=None, help="where same_budget.{md,json,png} go (default: --out)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=list(LEARNERS))
    p.add_argument(
        "--budget-maze", type=int, default=2_400_000, help="env steps per maze run (multiple of 24,000)"
    )
    p.add_argument(
        "--budget-cue", type=int, default=1_440_000, help="env steps per cue run (multiple of 14,400)"
    )
    p.add_argument("--workers", type=int, default=2, help="runs at a time (one torch thread each)")
    p.add_argument("--smooth", type=int, default=20, help="moving-average window of the curves, in updates")
    p.add_argument(
        "--hold",
        type=int,
        default=10,
        help="grid points (of 100 over the budget) a threshold must hold to count as reached",
    )
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from the folders")
    args = p.parse_args(argv)
    budgets = {"maze": args.budget_maze, "cue": args.budget_cue}
    for task in args.tasks:
        for learner in args.learners:
            per = steps_per_update(learner, TASKS[task])
            if budgets[task] % per:
                p.error(
                    f"--budget-{task} {budgets[task]} is not a multiple of {learner}'s {per} env steps per update"
                )
    if not 1 <= args.hold <= 100:
        p.error(f"--hold must be in 1..100, got {args.hold}")
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else out
    results.mkdir(parents=True, exist_ok=True)
    meta_path = out / "same_budget_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"lstm": {}}
    if "recurrent-ppo" in args.learners:
        for task in args.tasks:
            if task not in meta["lstm"]:
                target = plastic_params(TASKS[task])
                meta["lstm"][task] = [matched_lstm_width(TASKS[task], target), target]
    meta["lstm_params"] = {
        t: [w, target, lstm_policy_params(TASKS[t], w)] for t, (w, target) in meta["lstm"].items()
    }
    # every command that trained into --out, in order (a rebuilt report adds none)
    commands = meta.get("commands", [meta["command"]] if "command" in meta else [])
    if not args.report_only or not commands:
        command = "python benchmarks/same_budget.py " + " ".join(sys.argv[1:] if argv is None else argv)
        if command not in commands:
            commands.append(command)
        meta.update(workers=args.workers)
    meta.update(commands=commands)
    meta.pop("command", None)
    meta.update(budgets=budgets, seeds=args.seeds, smooth=args.smooth, hold=args.hold,
                machine=f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python "
                        f"{platform.python_version()}")  # fmt: skip
    meta_path.write_text(json.dumps(meta, indent=2))

    if not args.report_only:
        # seed-major: every learner gets seed 0 before any gets seed 1, so a stopped comparison is balanced
        jobs = [
            {"condition": f"{t}/{lr}", "task": t, "learner": lr, "seed": s, "budget": budgets[t],
             "run_dir": str(out / t / lr / f"seed{s}"),
             "lstm": meta["lstm"].get(t, [None])[0] if lr == "recurrent-ppo" else None}
            for s in args.seeds for t in args.tasks for lr in args.learners
        ]  # fmt: skip
        from bpm_agents.experiments.runner import run_local_pool

        # the sweep runner's pool: Ctrl-C or SIGTERM stops every run cleanly and starts no new one
        if run_local_pool(run_one, jobs, args.workers, _record, _Log()):
            print("interrupted: rerun the same command to continue", file=sys.stderr)
            return 130
    randoms = {t: random_level(t) for t in args.tasks}
    summary = summarise(out, args.tasks, args.learners, args.seeds, budgets, args.smooth, args.hold)
    (results / "same_budget.json").write_text(
        json.dumps({"meta": meta, "random": randoms, "summary": summary})
    )
    text = markdown(summary, randoms, meta)
    (results / "same_budget.md").write_text(text)
    if any(summary.values()):
        plot(summary, randoms, budgets, results / "same_budget.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
