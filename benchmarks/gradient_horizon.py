"""How a run's gradients grow with the backpropagation horizon (issue 29's exploding cue runs).

For each run folder this loads the latest checkpoint and acts one rollout (B episodes, the run's
own batch size and seed stream). For each window of steps it then prints every parameter's
gradient norm of a loss on that window only: the negative log-likelihood of the actions taken. The
loss on steps t0..t1 backpropagates through at most t1 steps of the recurrent and plastic state,
so a norm that grows by orders of magnitude from the first window to the last one means the
dynamics amplify gradients step after step (an exploding, chaotic regime). That is different from
a single bad minibatch. It runs the op-by-op reference path, so every rule and option works.

What-if probes (the checkpoint is never written): ``--scale-m`` multiplies the neuromodulator M(t)
by a factor, and ``--scale-alpha`` / ``--scale-w`` multiply alpha / w. Each factor is measured on
its own against the unscaled network, on the same rollout. The table's last column is the growth
of |d loss / d w| from the first window to the last one.

    python benchmarks/gradient_horizon.py RUN_DIR [RUN_DIR ...] --windows 0-9,60-69,110-119
    python benchmarks/gradient_horizon.py RUN_DIR --scale-m 0.5,0.2 --scale-alpha 0.5 --scale-w 0.7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from bpm_agents.checkpoint import CheckpointError
from bpm_agents.training import load_trainer


def parse_windows(text: str) -> list[tuple[int, int]]:
    """``"0-9,60-69"`` -> [(0, 10), (60, 70)] (inclusive ranges as half-open slices)."""
    windows = []
    for part in text.split(","):
        try:
            lo, hi = (int(v) for v in part.split("-"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"window {part!r} is not FIRST-LAST (e.g. 0-9)") from None
        if not 0 <= lo <= hi:
            raise argparse.ArgumentTypeError(f"window {part!r} needs 0 <= FIRST <= LAST")
        windows.append((lo, hi + 1))
    return windows


def parse_factors(text: str) -> list[float]:
    """``"0.5,0.2"`` -> [0.5, 0.2] (positive factors)."""
    try:
        factors = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of numbers") from None
    if not all(f > 0 for f in factors):
        raise argparse.ArgumentTypeError(f"factors must be > 0, got {text!r}")
    return factors


def horizon_norms(
    run_dir: Path, windows: list[tuple[int, int]], scale: tuple[str, float] | None = None
) -> dict[str, dict[str, float]]:
    """{window label: {parameter name: gradient norm}} for one rollout of the run's policy.

    ``scale``: (``m``, ``alpha`` or ``w``, factor) applied to the loaded network before the rollout
    is replayed; the rollout itself is acted by the unscaled network (the same for every probe).
    """
    trainer = load_trainer(run_dir)
    rollout = trainer.collect()
    policy = trainer.policy
    B, T = rollout.actions.shape
    if scale is not None:
        what, factor = scale
        synapses = policy.core.synapses
        if what == "m":
            if not synapses.config.modulated:
                raise ValueError(f"--scale-m needs a modulated rule, this run's is {synapses.config.rule!r}")
            unscaled = synapses.modulation
            synapses.modulation = lambda z: unscaled(z) * factor  # this instance only
        else:
            with torch.no_grad():
                (synapses.alpha if what == "alpha" else policy.core.w).mul_(factor)
    result = {}
    for lo, hi in windows:
        if hi > T:
            raise ValueError(f"window {lo}-{hi - 1} is past the episode's {T} steps")
        out = policy.unroll(rollout.obs, policy.initial_state(B), impl="reference")
        log_probs = torch.log_softmax(out.logits[:, lo:hi].float(), dim=-1)
        loss = -log_probs.gather(-1, rollout.actions[:, lo:hi, None]).mean()
        policy.zero_grad(set_to_none=True)
        loss.backward()
        result[f"steps {lo}-{hi - 1}"] = {
            name: p.grad.norm().item() for name, p in policy.named_parameters() if p.grad is not None
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (config.json + checkpoint.pt)")
    parser.add_argument("--windows", type=parse_windows, default=parse_windows("0-9,60-69,110-119"),
                        help="comma list of FIRST-LAST step windows (default 0-9,60-69,110-119)")  # fmt: skip
    for what in ("m", "alpha", "w"):
        parser.add_argument(f"--scale-{what}", type=parse_factors, default=[], metavar="F[,F...]",
                            help=f"also probe with {what} multiplied by each factor")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    probes: list[tuple[str, float] | None] = [None]
    probes += [(what, f) for what in ("m", "alpha", "w") for f in getattr(args, f"scale_{what}")]
    for run in args.runs:
        try:  # every probe of a run before any output, so a bad one prints nothing but its error
            tables = [(probe, horizon_norms(run, args.windows, probe)) for probe in probes]
        except (CheckpointError, OSError, ValueError) as exc:
            print(f"gradient_horizon.py: {run}: {exc}", file=sys.stderr)
            return 2
        for probe, norms in tables:
            print(f"# {run}" + ("" if probe is None else f", {probe[0]} x {probe[1]:g}"))
            names = list(next(iter(norms.values())))
            print("| window | " + " | ".join(names) + " |")
            print("|---" * (len(names) + 1) + "|")
            for label, row in norms.items():
                print(f"| {label} | " + " | ".join(f"{row[n]:.3g}" for n in names) + " |")
            rows = list(norms.values())
            print(f"growth of |grad w|, first window to last: {rows[-1]['core.w'] / rows[0]['core.w']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
