#!/usr/bin/env python
"""The same small tuning grid for every Penn Treebank variant, then the chosen setting of each (issue 15).

Every (variant, grid point, seed) is an ordinary language-model run folder
``OUT/<variant>/<point>/seed<k>`` trained by ``train.py lm`` in its own process (one torch thread
each, ``--workers`` at a time), so a grid that takes several sessions continues where it stopped:
rerunning the same command resumes unfinished runs (``--resume``) and skips finished ones (those
with a ``test.json``). Nothing is tuned for one variant that is not tuned for all: the grid is the
same list of flag settings for each.

The report (``OUT/grid.md`` / ``grid.json``, also written by ``--report-only``) gives per run the
best validation and the test perplexity, the epochs done, and from the last row of its
``progress.csv`` the share of |M| > 0.95 per layer (a collapsed modulator is ~1); per variant the grid
point with the lowest best-validation perplexity (mean over seeds), which is the one to run at 13
epochs.

Example (the 6-epoch grid of issue 15: three L2 strengths, lr halved every epoch from epoch 4)::

    python benchmarks/lm_grid.py --data ../shared/data/ptb --out runs/lm-grid --epochs 6 \\
        --grid "--l2 1e-6 --decay-start 4" "--l2 1e-4 --decay-start 4" "--l2 1e-3 --decay-start 4" \\
        --seeds 0 --workers 2

Then the chosen setting of each variant (read from the grid's ``grid.json``) at the full schedule::

    python benchmarks/lm_grid.py --data ../shared/data/ptb --out runs/lm-final --epochs 13 \\
        --chosen runs/lm-grid/grid.json --seeds 0 1 --workers 2

With ``--chosen`` each variant runs only its own chosen flags, and the report adds the comparison
table: parameters, test perplexity per seed, the mean and its standard deviation over seeds, and the
paper's Table 1 row (13 epochs, per-variant tuning, mean of 16 runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("lstm", "hebbian", "simple", "retroactive")
# Table 1 of the paper, small model: test perplexity, mean of 16 runs per variant
PAPER_TEST_PPL = {"lstm": 104.26, "hebbian": 103.80, "simple": 102.65, "retroactive": 102.48}


def point_name(flags: str) -> str:
    """A folder name for a grid point: ``--l2 1e-4 --decay-start 4`` -> ``l2=1e-4_decay-start=4``."""
    words = shlex.split(flags)
    parts, i = [], 0
    while i < len(words):
        key = words[i].lstrip("-")
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            parts.append(f"{key}={words[i + 1]}")
            i += 2
        else:
            parts.append(key)
            i += 1
    name = "_".join(parts) or "default"
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", name)


def run_one(variant: str, flags: str, seed: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Train (or continue) one run folder in a child process; its output goes to run.log."""
    if (run_dir / "test.json").exists():
        return {"run": str(run_dir), "status": "finished", "seconds": 0.0}
    cmd = [sys.executable, str(ROOT / "train.py"), "lm", "--data", args.data, "--out", str(run_dir),
           "--threads", "1", "--no-progress", "--device", args.device]  # fmt: skip
    if (run_dir / "checkpoint.pt").exists() or (run_dir / "last.pt").exists():
        cmd += ["--resume", "--epochs", str(args.epochs)]
    else:
        cmd += ["--variant", variant, "--preset", args.preset, "--epochs", str(args.epochs), "--seed", str(seed),
                *shlex.split(flags)]  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(run_dir / "run.log", "a") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    status = {0: "done", 130: "interrupted"}.get(code, f"failed (exit {code}; see {run_dir / 'run.log'})")
    return {"run": str(run_dir), "status": status, "seconds": time.perf_counter() - start}


def read_run(run_dir: Path) -> dict[str, Any] | None:
    log = run_dir / "progress.csv"
    if not log.is_file():
        log = run_dir / "log.csv"  # a folder of an earlier version
    if not log.is_file():
        return None
    with log.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("kind") == "epoch"]
    if not rows:
        return None
    valid = [float(r["valid_ppl"]) for r in rows]
    last = rows[-1]
    saturation = {k: float(v) for k, v in last.items() if k.endswith("m_saturated") and v not in ("", None)}
    best_valid, test = min(valid), None
    if (run_dir / "test.json").is_file():
        done = json.loads((run_dir / "test.json").read_text())
        test = done.get("test_ppl")
        # progress.csv rounds; the finished run's own record keeps full precision
        best_valid = done.get("best_valid_ppl", best_valid)
    params = None
    if (run_dir / "config.json").is_file():
        params = json.loads((run_dir / "config.json").read_text()).get("parameters")
    return {"epochs": len(rows), "best_valid": best_valid, "test": test, "saturation": saturation,
            "parameters": params}  # fmt: skip


def report(out: Path, grids: dict[str, list[str]], seeds: list[int], final: bool = False) -> str:
    """Write ``OUT/grid.md`` and ``OUT/grid.json`` for the grid points of each variant and return the text.

    ``grids`` maps a variant to its grid points (the same list for every variant in the tuning grid,
    one chosen point each with ``--chosen``); ``final`` adds the comparison with the paper.
    """
    results: dict[str, Any] = {}
    points = next(iter(grids.values()), [])
    if final:
        head = "# PTB: the chosen setting of each variant (generated by benchmarks/lm_grid.py --chosen)"
        what = "Per variant its chosen grid point: " + ", ".join(f"{v} `{gs[0]}`" for v, gs in grids.items())
    else:
        head = "# PTB tuning grid (generated by benchmarks/lm_grid.py)"
        what = "Grid points (the same for every variant): " + ", ".join(f"`{g}`" for g in points)
    lines = [head, "", f"{what}; seeds {seeds}.", "",
             "| variant | grid point | seed | epochs | best valid ppl | test ppl | share of abs(M) > 0.95 (last epoch) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for variant, grid in grids.items():
        results[variant] = {}
        for flags in grid:
            name = point_name(flags)
            runs = {s: read_run(out / variant / name / f"seed{s}") for s in seeds}
            results[variant][name] = {"flags": flags, "runs": {str(s): r for s, r in runs.items()}}
            for s, r in runs.items():
                if r is None:
                    lines.append(f"| {variant} | `{flags}` | {s} | 0 | | | |")
                    continue
                sat = (
                    ", ".join(f"{k.split('_')[0]} {v:.2f}" for k, v in sorted(r["saturation"].items())) or "-"
                )
                test = "" if r["test"] is None else f"{r['test']:.2f}"
                lines.append(
                    f"| {variant} | `{flags}` | {s} | {r['epochs']} | {r['best_valid']:.2f} | {test} | {sat} |"
                )
    chosen: dict[str, Any] = {}
    if not final:
        lines += ["", "Chosen per variant (lowest mean best-validation perplexity over its seeds, among points "
                  "where every seed has finished the same number of epochs):", ""]  # fmt: skip
        for variant, pts in results.items():
            scored, finished = [], 0
            for name, p in pts.items():
                done = [r for r in p["runs"].values() if r is not None]
                finished += all(r is not None and r["test"] is not None for r in p["runs"].values())
                if len(done) == len(seeds) and len({r["epochs"] for r in done}) == 1:
                    scored.append(
                        (sum(r["best_valid"] for r in done) / len(done), done[0]["epochs"], name, p["flags"])
                    )
            if scored:
                top_epochs = max(e for _, e, _, _ in scored)
                best = min(x for x in scored if x[1] == top_epochs)
                # a choice among some of the points only is shown, but --chosen refuses it
                # finished = every seed has its test.json, i.e. has run all its epochs
                comparable = sum(e == top_epochs for _, e, _, _ in scored)
                complete = finished == comparable == len(pts)
                chosen[variant] = {
                    "point": best[2],
                    "flags": best[3],
                    "mean_best_valid": best[0],
                    "epochs": best[1],
                    "complete": complete,
                }
                provisional = (
                    ""
                    if complete
                    else f"; provisional: {finished} of {len(pts)} points finished, {comparable} comparable"
                )
                lines.append(
                    f"- {variant}: `{best[3]}` (mean best valid ppl {best[0]:.2f} at {best[1]} epochs{provisional})"
                )
            else:
                lines.append(f"- {variant}: no grid point finished yet")
    comparison: dict[str, Any] = {}
    if final:
        lines += ["", "| model | params | test ppl per seed | mean +- sd over seeds | paper (mean of 16) |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for variant, pts in results.items():
            every = [r for p in pts.values() for r in p["runs"].values()]
            tests = [r["test"] for r in every if r is not None and r["test"] is not None]
            params = next((r["parameters"] for r in every if r is not None and r["parameters"]), None)
            per_seed = " / ".join(
                "-" if r is None or r["test"] is None else f"{r['test']:.2f}" for r in every
            )
            mean = statistics.mean(tests) if tests else None
            sd = statistics.stdev(tests) if len(tests) > 1 else None  # sample sd (n - 1)
            summary = "(not all seeds done)"
            if mean is not None and len(tests) == len(every):
                summary = f"{mean:.2f}" + ("" if sd is None else f" +- {sd:.2f}")
            params_s = f"{params:,}" if params else "-"
            lines.append(
                f"| `{variant}` | {params_s} | {per_seed} | {summary} | {PAPER_TEST_PPL[variant]:.2f} |"
            )
            comparison[variant] = {"parameters": params, "test_ppl": tests, "mean": mean, "sd": sd,
                                   "paper": PAPER_TEST_PPL[variant]}  # fmt: skip
    record = {"grids": grids, "seeds": seeds, "results": results, "chosen": chosen}
    if final:
        record["comparison"] = comparison
    (out / "grid.json").write_text(json.dumps(record, indent=2))
    text = "\n".join(lines) + "\n"
    (out / "grid.md").write_text(text)
    return text


def read_chosen(p: argparse.ArgumentParser, path: Path, variants: list[str]) -> dict[str, str]:
    """The chosen flags of each variant from a tuning grid's ``grid.json`` (a usage error if absent)."""
    try:
        chosen = json.loads(path.read_text())["chosen"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        p.error(f"--chosen {path}: not a grid.json written by this script ({type(e).__name__}: {e})")
    missing = [v for v in variants if v not in chosen]
    if missing:
        p.error(f"--chosen {path}: no finished grid point for {', '.join(missing)}; finish the grid first")
    partial = [v for v in variants if not chosen[v].get("complete", False)]
    if partial:
        p.error(f"--chosen {path}: the grid of {', '.join(partial)} is not finished (every point, every seed, "
                "the same epochs); finish it first, or rerun --report-only if it is")  # fmt: skip
    return {v: str(chosen[v]["flags"]) for v in variants}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", required=True, help="folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt")
    p.add_argument("--out", required=True, help="folder of the run folders (reruns continue them)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--grid", nargs="+", default=["--l2 1e-6 --decay-start 4", "--l2 1e-4 --decay-start 4",
                                                 "--l2 1e-3 --decay-start 4"],
                   help="grid points: each a string of train.py lm flags, the same for every variant")  # fmt: skip
    p.add_argument("--preset", default="small", help="train.py lm --preset of every run")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--workers", type=int, default=2, help="runs at a time (one torch thread each)")
    p.add_argument("--device", default="cpu", help="train.py lm --device of every run (cpu, cuda, auto)")
    p.add_argument("--chosen", metavar="GRID_JSON",
                   help="run each variant at its chosen point from this grid.json instead of --grid")  # fmt: skip
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    names = [point_name(g) for g in args.grid]
    if len(set(names)) != len(names):
        p.error(f"two grid points give the same folder name: {names}")
    grids = {v: list(args.grid) for v in args.variants}
    if args.chosen:
        grids = {v: [flags] for v, flags in read_chosen(p, Path(args.chosen), args.variants).items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        # seed- and point-major: every variant gets a grid point before any gets the next
        n_points = max(len(g) for g in grids.values())
        jobs = [(v, grids[v][i], s) for s in args.seeds for i in range(n_points) for v in args.variants
                if i < len(grids[v])]  # fmt: skip
        with ThreadPoolExecutor(max_workers=args.workers) as pool:  # each job is a child process
            futures = [
                pool.submit(run_one, v, g, s, args, out / v / point_name(g) / f"seed{s}") for v, g, s in jobs
            ]
            try:
                for fut in as_completed(futures):
                    r = fut.result()
                    print(f"{r['run']}: {r['status']} ({r['seconds'] / 60:.1f} min)", flush=True)
            except KeyboardInterrupt:  # the children got the Ctrl-C too: they save and exit 130
                print("interrupted: rerun the same command to continue", file=sys.stderr)
                pool.shutdown(cancel_futures=True)
                return 130
    print(report(out, grids, args.seeds, final=bool(args.chosen)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
