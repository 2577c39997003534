"""Summarise A2C learning runs: reward curve every K updates, wall time, and a plot.

Reads the ``progress.csv`` of each run folder given (as written by ``train.py``) and prints a
markdown table of the mean training-episode reward over the ``--window`` updates ending at every
``--every``-th update, with the wall time at that point. Runs that were resumed by an older
version of ``train.py`` restarted their ``wall_time`` column at zero; such restarts are detected
(the column decreases) and the segments are added up.

    python benchmarks/learning_curves.py runs/cue-*-s0 runs/cue-*-s1 --every 250 --plot curves.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def read_run(run_dir: Path) -> tuple[list[int], list[float], list[float]]:
    """Updates, rewards and cumulative wall seconds of one run folder."""
    path = run_dir / "progress.csv"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no progress.csv (is it a train.py run folder?)")
    updates, rewards, walls = [], [], []
    offset, previous = 0.0, 0.0
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            wall = float(row["wall_time"])
            if wall < previous:  # a resume by an older train.py restarted the clock
                offset += previous
            previous = wall
            updates.append(int(row["update"]))
            rewards.append(float(row["reward_mean"]))
            walls.append(offset + wall)
    if not updates:
        raise ValueError(f"{run_dir}: progress.csv has no rows yet")
    return updates, rewards, walls


def rule_of(run_dir: Path) -> str:
    import json

    try:
        meta = json.loads((run_dir / "config.json").read_text())
        return str(meta["config"].get("rule", meta.get("algo", "?")))
    except (OSError, ValueError, KeyError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="train.py run folders")
    p.add_argument("--every", type=int, default=250, help="one column every K updates")
    p.add_argument("--window", type=int, default=100, help="mean over the last W updates")
    p.add_argument("--plot", help="save the smoothed curves to this image")
    args = p.parse_args(argv)
    if args.every < 1 or args.window < 1:
        p.error("--every and --window must be >= 1")
    try:
        data = {run: read_run(run) for run in args.runs}
    except ValueError as exc:
        print(f"learning_curves.py: error: {exc}", file=sys.stderr)
        return 2

    last = max(u[-1] for u, _, _ in data.values())
    marks = list(range(args.every, last + 1, args.every))
    print(f"mean episode reward over the {args.window} updates ending at each mark (blank: not reached)")
    print()
    print("| run | rule | updates | wall h | s / update | " + " | ".join(str(m) for m in marks) + " |")
    print("|---" * (5 + len(marks)) + "|")
    for run, (updates, rewards, walls) in data.items():
        cells = []
        for m in marks:
            idx = [i for i, u in enumerate(updates) if m - args.window < u <= m]
            cells.append(f"{sum(rewards[i] for i in idx) / len(idx):.2f}" if idx and updates[-1] >= m else "")
        per_update = walls[-1] / updates[-1]
        print(
            f"| {run.name} | {rule_of(run)} | {updates[-1]} | {walls[-1] / 3600:.2f} | "
            f"{per_update:.2f} | " + " | ".join(cells) + " |"
        )

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        for run, (updates, rewards, _) in data.items():
            w = args.window
            smooth = [
                sum(rewards[max(0, i - w + 1) : i + 1]) / len(rewards[max(0, i - w + 1) : i + 1])
                for i in range(len(rewards))
            ]
            ax.plot(updates, smooth, label=f"{run.name}", lw=1.2)
        ax.set_xlabel("update (30 episodes each)")
        ax.set_ylabel(f"episode reward (mean of last {args.window} updates)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
