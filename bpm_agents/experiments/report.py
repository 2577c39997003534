"""The report of a sweep: curves, rank-sum tests and the paper's claims, from the run folders only.

Statistics as in the paper: each run's per-update mean episode reward is smoothed by a trailing
moving average (``window`` updates; fewer at the start); at every update the per-seed smoothed
values of two conditions are compared by the two-sided Wilcoxon rank-sum test
(``scipy.stats.ranksums``). Runs of unequal length are compared up to the shortest common update,
and the report says so.

Seed k gives every condition the same episodes and sampling uniforms, so the conditions' curves are
paired by seed. Beside the paper's (unpaired) rank-sum test the report gives the paired two-sided
Wilcoxon signed-rank test over the seeds both conditions have (``scipy.stats.wilcoxon``, exact
null distribution at these sizes), and for each test the smallest p it can reach with the seed
counts at hand (its value under complete separation): with 5 seeds a side the rank-sum test reaches
0.009, the signed-rank test only 0.0625, so "not significant" can be a matter of seed count.

A claim ``better > worse`` holds at this budget when, at the final common update, the median of
``better`` is above that of ``worse`` (and p < 0.05 if the claim asks for significance); a claim
``better >= worse`` holds when ``worse`` is significantly above ``better`` at no more than 5% of
the compared updates (the false-positive rate of the test itself).
Each claim also reports the fraction of compared updates where p < 0.05.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bpm_agents.checkpoint import not_a_folder
from bpm_agents.experiments.definitions import Claim, Experiment
from bpm_agents.experiments.runner import discover_runs, read_rewards, read_skips, run_dir_of

ALPHA = 0.05


class ReportError(ValueError):
    """A sweep folder that cannot be reported on, with the reason."""


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (the first ones average what exists)."""
    if window < 1:
        raise ReportError(f"window must be >= 1, got {window}")
    x = np.asarray(x, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


@dataclass
class ConditionData:
    """The smoothed curves of one condition's seeds."""

    name: str
    seeds: list[int] = field(default_factory=list)
    curves: list[np.ndarray] = field(default_factory=list)  # smoothed, one per seed
    batch_sizes: set[int] = field(default_factory=set)

    @property
    def lengths(self) -> list[int]:
        return [len(c) for c in self.curves]

    @property
    def common(self) -> int:
        """Updates that every seed has (0 without runs)."""
        return min(self.lengths) if self.curves else 0

    def matrix(self, updates: int) -> np.ndarray:
        """(seeds, updates) smoothed values of the first ``updates`` updates."""
        return np.stack([c[:updates] for c in self.curves])

    def at(self, update: int) -> np.ndarray:
        """Smoothed values at ``update`` (1-based) of the seeds that reached it."""
        return np.array([c[update - 1] for c in self.curves if len(c) >= update])


def load_sweep(
    out: str | Path, experiment: Experiment | None, window: int, seeds: list[int] | None = None
) -> tuple[list[ConditionData], list[str]]:
    """Read every run folder of ``out``: per condition, the smoothed reward curve of each seed.

    Conditions are the experiment's (in its order, including those without runs) or, without an
    experiment, every ``<condition>/seed<k>`` folder found; ``seeds``, if given, keeps only those
    seeds' folders. Returns the data and notes (warnings).
    """
    out = Path(out)
    if not out.is_dir():
        raise ReportError(f"sweep folder {out} {not_a_folder(out)}")
    found = discover_runs(out)
    if seeds is not None:
        found = [(c, k) for c, k in found if k in set(seeds)]
        if not found:
            raise ReportError(f"{out} holds no run folders of seeds {', '.join(map(str, seeds))}")
    names = [c.name for c in experiment.conditions] if experiment else sorted({c for c, _ in found})
    if not found:
        raise ReportError(f"{out} holds no run folders (<condition>/seed<k>/config.json)")
    notes: list[str] = [f"seeds {', '.join(map(str, seeds))} only"] if seeds is not None else []
    data = []
    for name in names:
        cond = ConditionData(name)
        for c, seed in found:
            if c != name:
                continue
            run_dir = run_dir_of(out, c, seed)
            try:
                cfg = json.loads((run_dir / "config.json").read_text())["config"]
                rewards = read_rewards(run_dir / "progress.csv")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ReportError(f"{run_dir} is not a readable run folder: {exc}") from None
            if experiment is not None:
                expected = experiment.condition(name)
                if cfg.get("rule") != expected.rule or cfg.get("env_id") != experiment.env_id:
                    notes.append(
                        f"{run_dir}: rule {cfg.get('rule')!r} / env {cfg.get('env_id')!r} do not "
                        f"match condition {name!r} of experiment {experiment.name!r}"
                    )
            if not rewards:
                notes.append(f"{run_dir}: no updates logged yet; left out")
                continue
            skips = read_skips(run_dir, window)
            if skips is not None and skips.skipped:
                notes.append(
                    f"{name} seed {seed}: {skips.skipped:,} of {skips.steps:,} gradient steps skipped "
                    f"(norm above grad_skip {cfg.get('grad_skip') or math.nan:g}), the first at update "
                    f"{skips.first_update}; {skips.recent_skipped:,} of {skips.recent_steps:,} in its "
                    f"last {min(window, len(rewards))} updates"
                )
            cond.seeds.append(seed)
            cond.curves.append(moving_average(np.array(rewards), window))
            cond.batch_sizes.add(int(cfg.get("batch_size", 0)))
        if not cond.curves:
            notes.append(f"condition {name}: no runs with logged updates")
        elif len(set(cond.lengths)) > 1:
            notes.append(
                f"condition {name}: seeds have {min(cond.lengths)}-{max(cond.lengths)} updates; "
                f"its curve stops at the shortest, {cond.common}"
            )
        data.append(cond)
    extra = sorted({c for c, _ in found} - set(names))
    if extra:
        notes.append(f"folders of conditions not in the experiment were ignored: {', '.join(extra)}")
    return data, notes


def _ranksums(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        from scipy.stats import ranksums
    except ImportError:
        raise ReportError("the report needs scipy: pip install 'scipy>=1.10'") from None
    res = ranksums(a, b, axis=0)
    return np.atleast_1d(res.statistic), np.atleast_1d(res.pvalue)


def _signed_rank(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the paired signed-rank test of ``a - b``: (direction, p).

    ``direction`` is +1 where the differences' signed ranks favour ``a``, -1 where they favour
    ``b``, 0 where every difference is 0 (p = 1 there: the two sides are identical).
    """
    import warnings

    from scipy.stats import rankdata, wilcoxon

    d = a - b
    nonzero = np.any(d != 0, axis=0)
    p = np.ones(d.shape[1])
    direction = np.zeros(d.shape[1])
    if nonzero.any():
        dz = d[:, nonzero]
        ranks = rankdata(np.abs(dz), axis=0) * (dz != 0)
        direction[nonzero] = np.sign((ranks * np.sign(dz)).sum(axis=0))
        with warnings.catch_warnings():  # columns with some zero differences use the normal approximation
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            p[nonzero] = np.atleast_1d(wilcoxon(dz, axis=0).pvalue)
    return direction, p


def smallest_p(n_a: int, n_b: int, paired: int) -> dict[str, float]:
    """The smallest two-sided p each test can give at these seed counts (complete separation)."""
    from scipy.stats import ranksums, wilcoxon

    a, b = np.arange(n_a, dtype=float) + n_b, np.arange(n_b, dtype=float)
    out = {"rank_sum": float(ranksums(a, b).pvalue)}
    out["signed_rank"] = float(wilcoxon(np.arange(1.0, paired + 1)).pvalue) if paired >= 1 else math.nan
    return out


def significant_ranges(mask: np.ndarray) -> list[tuple[int, int]]:
    """The runs of True in ``mask`` as 1-based inclusive (first, last) update pairs."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(s) + 1, int(e)) for s, e in zip(edges[::2], edges[1::2])]


def format_ranges(ranges: list[tuple[int, int]], limit: int = 8) -> str:
    """``12-40, 55, 60-61`` (the first ``limit`` runs, then how many more)."""
    if not ranges:
        return "none"
    text = ", ".join(f"{s}" if s == e else f"{s}-{e}" for s, e in ranges[:limit])
    return text + (f" and {len(ranges) - limit} more runs" if len(ranges) > limit else "")


def check_claim(claim: Claim, a: ConditionData, b: ConditionData, alpha: float = ALPHA) -> dict[str, Any]:
    """Test one claim on two conditions' smoothed curves; returns the verdict and the statistics.

    ``verdict`` is ``holds``, ``does not hold`` or ``not testable`` (fewer than 2 seeds a side).
    """
    res: dict[str, Any] = {
        "claim": claim.label,
        "better": claim.better,
        "worse": claim.worse,
        "relation": claim.relation,
        "significant_required": claim.significant,
        "text": claim.text,
        "n_better": len(a.curves),
        "n_worse": len(b.curves),
    }
    updates = min(a.common, b.common)
    if len(a.curves) < 2 or len(b.curves) < 2 or updates < 1:
        res.update(
            verdict="not testable",
            reason=f"needs >= 2 seeds with logged updates on each side (have {len(a.curves)} and {len(b.curves)})",
            compared_updates=updates,
        )
        return res
    stat, p = _ranksums(a.matrix(updates), b.matrix(updates))
    shared = sorted(set(a.seeds) & set(b.seeds))
    ia, ib = [a.seeds.index(k) for k in shared], [b.seeds.index(k) for k in shared]
    if len(shared) >= 2:
        direction, p_paired = _signed_rank(a.matrix(updates)[ia], b.matrix(updates)[ib])
    else:
        direction, p_paired = np.zeros(updates), np.full(updates, math.nan)
    paired_sig = p_paired < alpha
    med_a = float(np.median(a.matrix(updates)[:, -1]))
    med_b = float(np.median(b.matrix(updates)[:, -1]))
    sig = p < alpha
    better_sig, worse_sig = sig & (stat > 0), sig & (stat < 0)
    if claim.relation == ">":
        holds = med_a > med_b and (not claim.significant or bool(sig[-1]))
    else:
        # "no worse": worse significantly above better at no more updates than the test's own
        # false-positive rate; demanding "at no update" would fail by chance over thousands
        holds = float(worse_sig.mean()) <= alpha
    res.update(
        verdict="holds" if holds else "does not hold",
        compared_updates=updates,
        limited_by_shortest=updates < max(max(a.lengths), max(b.lengths)),
        final={
            "update": updates,
            "median_better": med_a,
            "median_worse": med_b,
            "statistic": float(stat[-1]),
            "p": float(p[-1]),
        },
        smallest_p=smallest_p(len(a.curves), len(b.curves), len(shared)),
        better_significant_ranges=significant_ranges(better_sig),
        worse_significant_ranges=significant_ranges(worse_sig),
        paired={
            "seeds": shared,
            "p_final": float(p_paired[-1]),
            "direction_final": int(direction[-1]),
            "fraction_better_significant": float((paired_sig & (direction > 0)).mean()),
            "fraction_worse_significant": float((paired_sig & (direction < 0)).mean()),
            "better_significant_ranges": significant_ranges(paired_sig & (direction > 0)),
            "worse_significant_ranges": significant_ranges(paired_sig & (direction < 0)),
        },
        fraction_p_below_alpha=float(sig.mean()),
        fraction_better_significant=float(better_sig.mean()),
        fraction_worse_significant=float(worse_sig.mean()),
        statistic=stat,
        p=p,
        p_paired=p_paired,
    )
    return res


def _nice_step(last: int, count: int) -> int:
    base = 1
    while True:
        for m in (1, 2, 5):
            if last / (base * m) <= count:
                return base * m
        base *= 10


def table_marks(last: int, count: int = 6) -> list[int]:
    """Round update marks (1-2-5 steps), at most ``count`` up to ``last``, plus ``last`` itself."""
    if last < 1:
        return []
    step = _nice_step(last, count)
    marks = list(range(step, last + 1, step))
    if not marks or marks[-1] != last:
        marks.append(last)
    return marks


@dataclass
class Report:
    """Everything a report shows; ``to_json`` / ``text`` / ``figure`` render it."""

    title: str
    window: int
    batch_size: int | None
    conditions: list[ConditionData]
    claims: list[dict[str, Any]]
    marks: list[int]
    notes: list[str]
    levels: dict[str, float] = field(default_factory=dict)

    def table(self) -> dict[str, list[dict[str, Any]]]:
        rows: dict[str, list[dict[str, Any]]] = {}
        for c in self.conditions:
            rows[c.name] = []
            for m in self.marks:
                v = c.at(m)
                q = np.percentile(v, [25, 50, 75]) if len(v) else [math.nan] * 3
                rows[c.name].append(
                    {
                        "update": m,
                        "median": float(q[1]),
                        "q25": float(q[0]),
                        "q75": float(q[2]),
                        "n": int(len(v)),
                    }
                )
        return rows

    def text(self) -> str:
        lines = [
            self.title,
            f"moving average over {self.window} updates"
            + (f"; one update = {self.batch_size} episodes" if self.batch_size else ""),
        ]
        if self.levels:
            lines.append(
                "reference levels (mean episode reward): "
                + ", ".join(f"{k} {v:g}" for k, v in self.levels.items())
            )
        lines.append("")
        lines.append(
            "runs: "
            + "; ".join(
                f"{c.name}: {len(c.curves)} seed{'' if len(c.curves) == 1 else 's'}"
                + (f", {c.common} updates" if c.curves else "")
                + (f" ({min(c.lengths)}-{max(c.lengths)})" if c.curves and len(set(c.lengths)) > 1 else "")
                for c in self.conditions
            )
        )
        lines.append("")
        lines.append("smoothed episode reward: median [q25, q75] (n seeds) at update (episodes)")
        table = self.table()
        cells = [["update"] + [c.name for c in self.conditions]]
        for i, m in enumerate(self.marks):
            ep = f" ({m * self.batch_size:,})" if self.batch_size else ""
            row = [f"{m}{ep}"]
            for c in self.conditions:
                t = table[c.name][i]
                row.append(
                    "-" if t["n"] == 0 else f"{t['median']:.2f} [{t['q25']:.2f}, {t['q75']:.2f}] ({t['n']})"
                )
            cells.append(row)
        widths = [max(len(r[j]) for r in cells) for j in range(len(cells[0]))]
        lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in cells]
        lines.append("")
        lines.append(f"claims (two-sided rank-sum test of per-seed smoothed values, p < {ALPHA}):")
        for claim in self.claims:
            sig = " (significant)" if claim["significant_required"] else ""
            head = f"- {claim['claim']}{sig}: "
            if claim["verdict"] == "not testable":
                lines.append(head + f"NOT TESTABLE: {claim['reason']}")
                continue
            f = claim["final"]
            limited = " (the shortest common run length)" if claim["limited_by_shortest"] else ""
            lines.append(
                head + ("HOLDS" if claim["verdict"] == "holds" else "DOES NOT HOLD") + " at this budget. "
                f"At update {f['update']}{limited}: median {f['median_better']:.2f} vs {f['median_worse']:.2f}, "
                f"statistic {f['statistic']:.3f}, p = {f['p']:.4g}; p < {ALPHA} at "
                f"{100 * claim['fraction_p_below_alpha']:.1f}% of updates 1-{claim['compared_updates']} "
                f"({100 * claim['fraction_better_significant']:.1f}% with {claim['better']} above, "
                f"{100 * claim['fraction_worse_significant']:.1f}% below)"
            )
            lines.append(
                f"  rank-sum p < {ALPHA} with {claim['better']} above at updates "
                f"{format_ranges([tuple(r) for r in claim['better_significant_ranges']])}; below at "
                f"{format_ranges([tuple(r) for r in claim['worse_significant_ranges']])}"
            )
            pr, low = claim["paired"], claim["smallest_p"]
            if len(pr["seeds"]) >= 2:
                lines.append(
                    f"  paired signed-rank test over {len(pr['seeds'])} shared seeds: p = {pr['p_final']:.4g} "
                    f"at update {f['update']}; p < {ALPHA} at "
                    f"{100 * pr['fraction_better_significant']:.1f}% of updates with {claim['better']} above, "
                    f"{100 * pr['fraction_worse_significant']:.1f}% below"
                )
            else:
                lines.append("  paired signed-rank test: fewer than 2 shared seeds")
            lines.append(
                f"  smallest p reachable at these seed counts: rank-sum {low['rank_sum']:.4g}, "
                f"signed-rank {low['signed_rank']:.4g}"
            )
            if claim["text"]:
                lines.append(f"  paper: {claim['text']}")
        if not self.claims:
            lines.append("- none (no experiment definition: pass --experiment NAME to check its claims)")
        if self.notes:
            lines.append("")
            lines.append("notes:")
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        def r(x: np.ndarray) -> list[Any]:
            return [None if not math.isfinite(v) else round(float(v), 5) for v in x]

        conditions = {}
        for c in self.conditions:
            entry: dict[str, Any] = {"seeds": c.seeds, "lengths": c.lengths, "common_updates": c.common}
            if c.curves:
                q = np.percentile(c.matrix(c.common), [25, 50, 75], axis=0)
                entry.update(q25=r(q[0]), median=r(q[1]), q75=r(q[2]))
            conditions[c.name] = entry
        claims = []
        for claim in self.claims:
            claim = dict(claim)
            for key in ("statistic", "p", "p_paired"):
                if key in claim:
                    claim[key + "_per_update"] = [
                        None if not math.isfinite(v) else float(f"{v:.5g}") for v in claim.pop(key)
                    ]
            claims.append(claim)
        return {
            "title": self.title,
            "window": self.window,
            "batch_size": self.batch_size,
            "alpha": ALPHA,
            "conditions": conditions,
            "table": self.table(),
            "claims": claims,
            "notes": self.notes,
            "levels": self.levels,
        }

    def curves_csv(self) -> str:
        """Every run's smoothed curve, one column per run (empty past a run's end)."""
        cols = [(c.name, s, curve) for c in self.conditions for s, curve in zip(c.seeds, c.curves)]
        longest = max((len(x[2]) for x in cols), default=0)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["update"] + [f"{n}/seed{s}" for n, s, _ in cols])
        for i in range(longest):
            w.writerow([i + 1] + [f"{x[2][i]:.4f}" if i < len(x[2]) else "" for x in cols])
        return buf.getvalue()

    def figure(self, path: str | Path) -> None:
        """The paper-style figure: median and IQR band per condition, p < 0.05 markers per claim."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 5.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        lows, highs = [], []
        colours = {}
        for c in self.conditions:
            if not c.curves:
                continue
            q = np.percentile(c.matrix(c.common), [25, 50, 75], axis=0)
            x = np.arange(1, c.common + 1)
            (line,) = ax.plot(x, q[1], lw=1.5, label=f"{c.name} (n={len(c.curves)})")
            colours[c.name] = line.get_color()
            ax.fill_between(x, q[0], q[2], color=line.get_color(), alpha=0.2, lw=0)
            # the first updates average fewer than `window` values and swing widely: they do not
            # set the y-range when the run is longer than the window
            start = self.window if c.common > self.window else 0
            lows.append(q[0][start:].min())
            highs.append(q[2][start:].max())
        if lows:
            lo, hi = min(lows), max(highs)
            span = (hi - lo) or 1.0
            testable = [c for c in self.claims if c["verdict"] != "not testable"]
            row = 0.06 * span
            for i, claim in enumerate(testable):
                # every significant update, as bars over runs of consecutive updates; the upper
                # half of a row is "better above", the lower half (black) the opposite direction
                y = lo - (i + 1) * row
                colour = colours.get(claim["better"], "k")
                up = [(s - 0.5, e - s + 1) for s, e in claim["better_significant_ranges"]]
                down = [(s - 0.5, e - s + 1) for s, e in claim["worse_significant_ranges"]]
                ax.broken_barh(up, (y, 0.4 * row), color=colour, lw=0)
                ax.broken_barh(down, (y - 0.4 * row, 0.4 * row), color="k", lw=0)
                # a bar of one update is thinner than a pixel: a tick at each run's start shows it
                for ranges, dy, tick in ((up, 0.2, colour), (down, -0.2, "k")):
                    starts = [s + 0.5 for s, _ in ranges]
                    ax.plot(
                        starts, np.full(len(starts), y + dy * row), ls="none", marker="|", ms=5, color=tick
                    )
                ax.annotate(
                    f"p < {ALPHA}: {claim['better']} above / below (black) {claim['worse']}",
                    (0, y + 0.5 * row),
                    xycoords=("axes fraction", "data"),
                    xytext=(3, 0),
                    textcoords="offset points",
                    fontsize=7,
                    va="center",
                    color=colour,
                )
            ax.set_ylim(lo - (len(testable) + 0.8) * row, hi + 0.05 * span)
            # reference levels as dotted lines; a level outside the data's range (an oracle far
            # above every curve) is named in the text only, it does not squash the curves
            for k, v in self.levels.items():
                if lo <= v <= hi + 0.05 * span:
                    ax.axhline(v, ls=":", lw=1, color="0.4")
                    ax.annotate(
                        k,
                        (1, v),
                        xycoords=("axes fraction", "data"),
                        xytext=(-3, 2),
                        textcoords="offset points",
                        fontsize=7,
                        ha="right",
                        color="0.4",
                    )
        ax.set_xlabel("updates")
        ax.set_ylabel(f"episode reward (moving average over {self.window} updates)")
        if self.batch_size:
            b = self.batch_size
            # matplotlib's stub types the transforms' argument as ArrayLike; they get float arrays
            top = ax.secondary_xaxis("top", functions=(lambda u: u * b, lambda e: e / b))  # type: ignore[operator]
            top.set_xlabel(f"episodes (updates x {b})")
        ax.set_title(self.title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.savefig(path, dpi=120)


def build_report(
    out: str | Path,
    experiment: Experiment | None = None,
    window: int = 100,
    marks: list[int] | None = None,
    protocol: str | None = None,
    seeds: list[int] | None = None,
) -> Report:
    """Read the run folders of ``out`` (only ``seeds``' if given) and compute the report (nothing
    is written)."""
    data, notes = load_sweep(out, experiment, window, seeds)
    batch = {b for c in data for b in c.batch_sizes}
    batch_size = next(iter(batch)) if len(batch) == 1 else None
    if len(batch) > 1:
        notes.append(f"runs have different batch sizes {sorted(batch)}: the episodes axis is left out")
    claims = []
    if experiment is not None:
        by_name = {c.name: c for c in data}
        claims = [check_claim(cl, by_name[cl.better], by_name[cl.worse]) for cl in experiment.claims]
        compared = {c["compared_updates"] for c in claims if c["verdict"] != "not testable"}
        longest = max((max(c.lengths) for c in data if c.curves), default=0)
        if compared and min(compared) < longest:
            notes.append(
                f"runs have unequal lengths (longest {longest} updates): each claim is compared "
                "up to the shortest run of its two conditions"
            )
    last = max((max(c.lengths) for c in data if c.curves), default=0)
    marks = sorted(set(marks)) if marks else table_marks(last)
    if any(m < 1 for m in marks):
        raise ReportError(f"update marks must be >= 1, got {marks}")
    name = experiment.name if experiment else Path(out).name
    title = f"{name}" + (f" (protocol {protocol})" if protocol else "") + f": {Path(out).resolve().name}"
    levels = dict(experiment.levels) if experiment else {}
    return Report(title, window, batch_size, data, claims, marks, notes, levels)


def write_report(report: Report, prefix: str | Path) -> list[Path]:
    """Write ``PREFIX.txt``, ``PREFIX.json``, ``PREFIX.png`` and ``PREFIX_curves.csv``."""
    from bpm_agents.checkpoint import atomic_write_json, atomic_write_text

    prefix = Path(prefix)
    paths = [prefix.with_name(prefix.name + s) for s in (".txt", ".json", ".png", "_curves.csv")]
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths[0], report.text())
        atomic_write_json(paths[1], report.to_json())
        report.figure(paths[2])
        atomic_write_text(paths[3], report.curves_csv())
    except OSError as exc:
        raise ReportError(f"cannot write the report to {prefix}*: {exc.strerror or exc}") from None
    return paths


__all__ = [
    "Report",
    "ReportError",
    "build_report",
    "check_claim",
    "load_sweep",
    "moving_average",
    "significant_ranges",
    "smallest_p",
    "table_marks",
    "write_report",
]
