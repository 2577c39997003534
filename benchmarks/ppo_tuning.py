"""Issue 29's tuning sweep: plastic PPO settings on the maze (``simple`` rule), tuning seeds only.

Each setting of :data:`GRID` is trained with ``bpm train --algo plastic-ppo`` to ``--budget``
env steps on each ``--seeds`` seed (100-102 by default: distinct from the comparison seeds 0-2 of
``benchmarks/same_budget.py``). Reruns continue the run folders (``--resume``), so the sweep spans
sessions. The report gives, per setting and seed, the mean episode reward of the last 20 updates
before each budget mark, the env steps at which the 20-update mean first reached 60, and wall
time; the settings that differ from the defaults are the grid's only variables.

    python benchmarks/ppo_tuning.py --out sweeps/ppo-tuning --results benchmarks/results/ppo_tuning
    python benchmarks/ppo_tuning.py --out sweeps/ppo-tuning --settings b10-e10m5-lr1e-3 --seeds 100 101 102
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

#: name -> flags beyond the common ones; "default" is plastic PPO as it ships
GRID: dict[str, list[str]] = {
    "default": [],
    "b10-e10m5": ["--batch-size", "10", "--n-epochs", "10", "--minibatches", "5"],
    "b10-e10m5-lr1e-3": ["--batch-size", "10", "--n-epochs", "10", "--minibatches", "5", "--lr", "1e-3"],
    "b10-e4m5-lr1e-3": ["--batch-size", "10", "--n-epochs", "4", "--minibatches", "5", "--lr", "1e-3"],
    "b30-e10m10-lr1e-3": ["--batch-size", "30", "--n-epochs", "10", "--minibatches", "10", "--lr", "1e-3"],
    "b10-e10m10": ["--batch-size", "10", "--n-epochs", "10", "--minibatches", "10"],
}
COMMON = ["--algo", "plastic-ppo", "--env", "bpm/PlasticMaze-v0", "--plasticity", "simple",
          "--no-progress", "--no-tensorboard", "--threads", "1", "--checkpoint-every", "50"]  # fmt: skip
EPISODE_STEPS = 200  # the maze's episode length
WINDOW = 20  # updates in the reported means
THRESHOLD = 60.0


def batch_of(flags: list[str]) -> int:
    return int(flags[flags.index("--batch-size") + 1]) if "--batch-size" in flags else 30


def run_one(out: Path, name: str, seed: int, budget: int) -> None:
    flags = GRID[name]
    steps_per_update = batch_of(flags) * EPISODE_STEPS
    if budget % steps_per_update:
        raise SystemExit(
            f"--budget {budget} is not a multiple of {name}'s {steps_per_update} steps per update"
        )
    run = out / name / f"seed{seed}"
    argv = [sys.executable, "-m", "bpm_agents", "train", *COMMON, *flags, "--seed", str(seed),
            "--updates", str(budget // steps_per_update), "--out", str(run)]  # fmt: skip
    if (run / "config.json").exists():
        argv.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"{name} seed {seed}: {' '.join(argv[3:])}", flush=True)
    done = subprocess.run(argv, env=env)
    if done.returncode:  # e.g. a diverged run (exit 2): report it and go on with the grid
        print(f"{name} seed {seed}: stopped with exit code {done.returncode}", flush=True)


def summarize(out: Path, budget: int) -> list[dict]:
    marks = [budget // 4, budget // 2, budget]
    rows = []
    for name in GRID:
        for run in sorted((out / name).glob("seed*")):
            with (run / "progress.csv").open(newline="") as f:
                log = [
                    (int(r["env_steps"]), float(r["reward_mean"]), float(r["wall_time"]))
                    for r in csv.DictReader(f)
                ]
            if not log:
                continue
            row: dict = {
                "setting": name,
                "seed": int(run.name[4:]),
                "env_steps": log[-1][0],
                "wall_s": log[-1][2],
            }
            for mark in marks:
                window = [r for s, r, _ in log if s <= mark][-WINDOW:]
                row[f"reward@{mark:,}"] = sum(window) / len(window) if window and log[-1][0] >= mark else None
            reached = None
            for i in range(WINDOW - 1, len(log)):
                if sum(r for _, r, _ in log[i - WINDOW + 1 : i + 1]) / WINDOW >= THRESHOLD:
                    reached = log[i][0]
                    break
            row["first_20_update_mean>=60_at"] = reached
            rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder of the run folders (reruns continue them)")
    p.add_argument("--results", default=None, help="where ppo_tuning.{md,json} go (default: --out)")
    p.add_argument("--settings", nargs="+", default=list(GRID), choices=list(GRID))
    p.add_argument("--seeds", type=int, nargs="+", default=[100])
    p.add_argument("--budget", type=int, default=1_002_000, help="env steps per run (a multiple of 6,000)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if not args.report_only:
        for name in args.settings:
            for seed in args.seeds:
                run_one(out, name, seed, args.budget)
    rows = summarize(out, args.budget)
    results = Path(args.results or out)
    results.mkdir(parents=True, exist_ok=True)
    (results / "ppo_tuning.json").write_text(
        json.dumps({"grid": GRID, "common": COMMON, "rows": rows}, indent=2) + "\n"
    )
    keys = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                "-"
                if r[k] is None
                else f"{r[k]:.1f}"
                if isinstance(r[k], float)
                else f"{r[k]:,}"
                if isinstance(r[k], int)
                else str(r[k])
                for k in keys
            )
            + " |"
        )
    (results / "ppo_tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
