"""Copy the compact per-update curves and configs of run folders into benchmarks/results/.

For every run folder under SWEEP (``<condition>/seed<k>/`` with a ``progress.csv``), writes
``OUT/curves/<condition>-seed<k>.csv`` with the columns update, env_steps, wall_time, reward_mean
and ``OUT/configs/<condition>-seed<k>.json`` (the run's config.json). Checkpoints and TensorBoard
files stay in the sweep folder.

    python benchmarks/export_curves.py /path/to/sweeps/fig2-paper benchmarks/results/fig2
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

COLUMNS = ("update", "env_steps", "wall_time", "reward_mean")


def export(sweep: Path, out: Path) -> int:
    n = 0
    for progress in sorted(sweep.glob("*/seed*/progress.csv")):
        run = progress.parent
        name = f"{run.parent.name}-{run.name}"
        (out / "curves").mkdir(parents=True, exist_ok=True)
        (out / "configs").mkdir(parents=True, exist_ok=True)
        with progress.open(newline="") as src, (out / "curves" / f"{name}.csv").open("w", newline="") as dst:
            writer = csv.writer(dst)
            writer.writerow(COLUMNS)
            for row in csv.DictReader(src):
                if all(row.get(c) not in (None, "") for c in COLUMNS):
                    writer.writerow([row[c] for c in COLUMNS])
        shutil.copyfile(run / "config.json", out / "configs" / f"{name}.json")
        n += 1
    return n


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    print(f"exported {export(Path(sys.argv[1]), Path(sys.argv[2]))} runs")
