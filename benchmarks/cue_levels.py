"""The cue task's reference levels: random answers (chance) and an oracle that knows the target.

    python benchmarks/cue_levels.py [--episodes 100000] [--out benchmarks/results/cue_levels.json]

The oracle answers every Go step right, so it bounds any learner from above (a meta-learner must
first find the target from the rewards); random answers score 0 in expectation. fig1 plays the
20-bit random cues, a5 the 4 fixed one-hot cues (the same trial structure).
"""

from __future__ import annotations

from typing import Any

from maze_levels import report_levels  # this folder's maze script: the same command line

from bpm_envs.cue_levels import levels


def levels_with_kwargs(episodes: int, seed: int, **kwargs: Any) -> dict[str, Any]:
    return {"env_kwargs": kwargs, **levels(episodes, seed, **kwargs)}


def main() -> None:
    variants = {"fig1": ("fig1", {}), "a5": ("a5 {'fixed_cues': True}", {"fixed_cues": True})}
    report_levels(__doc__, "variants", variants, levels_with_kwargs, "random answers")


if __name__ == "__main__":
    main()
