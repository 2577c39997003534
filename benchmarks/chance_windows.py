"""How far from chance do the cue-task runs' 100-update means stray, against pure chance?

For each committed run of an experiment (``benchmarks/results/<exp>/curves/*.csv``) this prints the
largest |100-update moving mean| of the per-update reward, then the same statistic for simulated
runs at chance: independent updates drawn N(0, sd), with sd the runs' own single-update standard
deviation (at 50/50 answers it is sqrt(18.5 trials / 30 episodes), about 0.78).

    python benchmarks/chance_windows.py fig1 a5
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def moving_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Means of every full ``window`` of ``x`` (length len(x) - window + 1)."""
    return np.convolve(x, np.ones(window) / window, mode="valid")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiments", nargs="+", help="result folders, e.g. fig1 a5")
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--simulations", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for exp in args.experiments:
        files = sorted((RESULTS / exp / "curves").glob("*.csv"))
        if not files:
            raise SystemExit(f"chance_windows.py: no curves in {RESULTS / exp / 'curves'}")
        peaks, sds, length = [], [], 0
        for f in files:
            with f.open() as fh:
                r = np.array([float(row["reward_mean"]) for row in csv.DictReader(fh)])
            peak = float(np.abs(moving_mean(r, args.window)).max())
            peaks.append(peak)
            sds.append(float(r.std()))
            length = len(r)
            print(
                f"{exp} {f.stem}: {len(r)} updates, single-update sd {r.std():.3f}, "
                f"max |{args.window}-update mean| {peak:.3f}"
            )
        sd = float(np.median(sds))
        sim = [
            float(np.abs(moving_mean(rng.normal(0.0, sd, length), args.window)).max())
            for _ in range(args.simulations)
        ]
        lo, med, hi = np.percentile(sim, [5, 50, 95])
        print(
            f"{exp}: runs' max |mean| {min(peaks):.3f}-{max(peaks):.3f}; chance "
            f"(sd {sd:.3f}, {length} updates, {args.simulations} simulations): "
            f"median {med:.3f}, 5-95% {lo:.3f}-{hi:.3f}; sd of one {args.window}-update "
            f"mean {sd / np.sqrt(args.window):.3f}"
        )


if __name__ == "__main__":
    main()
