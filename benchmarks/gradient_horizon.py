"""How a run's gradients grow with the backpropagation horizon (issue 29's exploding cue runs).

For each run folder this loads the latest checkpoint and acts one rollout (B episodes, the run's
own batch size and seed stream). For each window of steps it then prints every parameter's
gradient norm of a loss on that window only: the negative log-likelihood of the actions taken. The
loss on steps t0..t1 backpropagates through at most t1 steps of the recurrent and plastic state,
so a norm that grows by orders of magnitude from the first window to the last one means the
dynamics amplify gradients step after step (an exploding, chaotic regime). That is different from
a single bad minibatch. It runs the op-by-op reference path, so every rule and option works.

    python benchmarks/gradient_horizon.py RUN_DIR [RUN_DIR ...] --windows 0-9,60-69,110-119
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


def horizon_norms(run_dir: Path, windows: list[tuple[int, int]]) -> dict[str, dict[str, float]]:
    """{window label: {parameter name: gradient norm}} for one rollout of the run's policy."""
    trainer = load_trainer(run_dir)
    rollout = trainer.collect()
    policy = trainer.policy
    B, T = rollout.actions.shape
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
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for run in args.runs:
        try:
            norms = horizon_norms(run, args.windows)
        except (CheckpointError, OSError, ValueError) as exc:
            print(f"gradient_horizon.py: {run}: {exc}", file=sys.stderr)
            return 2
        print(f"# {run}")
        names = list(next(iter(norms.values())))
        print("| window | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for label, row in norms.items():
            print(f"| {label} | " + " | ".join(f"{row[n]:.3g}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
