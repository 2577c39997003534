"""Short runs pinned to their numbers, so a change of what training computes cannot pass silently.

Runs with identical configs and seeds gave different curves across code versions (the same-budget
plastic A2C against fig2, the plastic PPO probe against the same-budget seed 0). Float rounding
changes alone make two trajectories part after tens of updates; a change of the rules, the loss,
the sampling or the environments changes the first updates. These numbers were recorded on
2026-12-06 (commit after 5b8e740) with both implementations, which agree with each other to
float32 rounding. If a deliberate change moves them, update them in the same commit and say why
in its message; results committed before it then ran on other arithmetic.
"""

import pytest

from bpm_agents.a2c import A2CConfig, A2CTrainer
from bpm_agents.ppo import PlasticPPOTrainer, PPOConfig

SMALL = dict(batch_size=6, hidden_size=16, seed=3)

#: (learner, env, rule) -> [(mean episode reward, loss)] of updates 1-4
PINNED = {
    ("plastic-a2c", "bpm/PlasticMaze-v0", "simple"): [
        (5.0, 0.5058054327964783),
        (10.0, 0.9788718223571777),
        (16.66666603088379, 1.6846015453338623),
        (5.0, 0.46305277943611145),
    ],
    ("plastic-a2c", "bpm/CueReward-v0", "retroactive"): [
        (-3.5, -0.11245916783809662),
        (2.3333332538604736, 0.19148878753185272),
        (0.6666666865348816, 0.08226722478866577),
        (1.1666666269302368, 0.11430709064006805),
    ],
    ("plastic-ppo", "bpm/PlasticMaze-v0", "hebbian"): [
        (6.666666507720947, 1.2868804772539686),
        (6.666666507720947, 1.6372857213330765),
        (10.0, 2.0343983073253185),
        (13.333333015441895, 2.8899957140286765),
    ],
}


@pytest.mark.parametrize("impl", ["reference", "auto"])
@pytest.mark.parametrize("key", list(PINNED), ids=lambda k: "-".join(k).replace("bpm/", ""))
def test_short_run_matches_its_pinned_numbers(key, impl):
    learner, env_id, rule = key
    if learner == "plastic-ppo":
        trainer = PlasticPPOTrainer(PPOConfig(env_id=env_id, rule=rule, unroll_impl=impl, **SMALL))
    else:
        trainer = A2CTrainer(A2CConfig(env_id=env_id, rule=rule, unroll_impl=impl, **SMALL))
    got = [trainer.update() for _ in PINNED[key]]
    # rewards follow the sampled actions exactly; losses to float32 rounding of the two paths
    assert [m["reward_mean"] for m in got] == pytest.approx([r for r, _ in PINNED[key]], abs=1e-6)
    assert [m["loss"] for m in got] == pytest.approx([loss for _, loss in PINNED[key]], rel=1e-4)
