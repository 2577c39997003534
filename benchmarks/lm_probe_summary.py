"""Summarise short LM probe runs: validation perplexity at every check and the plasticity
statistics of :mod:`bpm_agents.lm.stats`, one markdown section per run, from each run's
``config.json`` and ``progress.csv`` (``log.csv`` in folders of earlier versions).

    python benchmarks/lm_probe_summary.py runs/probe-* > benchmarks/results/lm_probes/summary-tables.md
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

STATS = ("alpha_abs", "w_abs", "hebb_at_clip", "plastic_ratio", "m_mean", "m_std_t", "m_saturated")


def flags(argv: list[str]) -> str:
    """The command line's options beyond the common probe ones."""
    common = {"--data", "--max-steps", "--valid-every", "--threads", "--device", "--seed", "--out"}
    out, skip = [], False
    for a in argv[2:]:
        if skip:
            skip = False
            continue
        if a in common:
            skip = True
            continue
        if a != "--no-progress":
            out.append(a)
    return " ".join(out)


def section(run: Path) -> str:
    config = json.loads((run / "config.json").read_text())
    log = run / "progress.csv" if (run / "progress.csv").is_file() else run / "log.csv"
    rows = [r for r in csv.DictReader(open(log)) if r["kind"] == "check"]
    m = config["config"]["model"] if "kind" in config else config["model"]  # before the run schema
    argv = config.get("command") or config.get("argv") or []
    lines = [
        f"### {run.name}",
        "",
        f"`{flags(argv)}`; hidden {m['hidden_sizes']}, {config['parameters']:,} parameters, "
        f"plastic step: {config.get('plastic_step', '?')}",
        "",
        "| step | train ppl | valid ppl | "
        + " | ".join(f"l1 {s}" for s in STATS)
        + " | "
        + " | ".join(f"l2 {s}" for s in STATS)
        + " |",
        "|" + "---|" * (3 + 2 * len(STATS)),
    ]
    for r in rows:
        cells = [r["step"], f"{float(r['train_ppl']):.1f}", f"{float(r['valid_ppl']):.1f}"]
        for k in (1, 2):
            for s in STATS:
                v = r.get(f"l{k}_{s}", "")
                cells.append("" if v == "" else f"{float(v):.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (with config.json and progress.csv)")
    args = p.parse_args(argv)
    for run in args.runs:
        has_log = (run / "progress.csv").is_file() or (run / "log.csv").is_file()
        if not has_log or not (run / "config.json").is_file():
            print(f"error: {run} has no progress.csv / config.json", file=sys.stderr)
            return 2
        print(section(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
