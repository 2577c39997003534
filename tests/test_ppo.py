"""Plastic PPO (bpm_agents/ppo.py): GAE, the clipped loss by hand, reuse of the acting forward,
resume bit for bit, bad settings."""

from __future__ import annotations

import math

import pytest
import torch

from bpm_agents import ppo
from bpm_agents.a2c import discounted_returns
from bpm_agents.ppo import PlasticPPOTrainer, PPOConfig, gae, normalized, ppo_loss
from bpm_agents.training import load_trainer, train

TINY = dict(
    env_id="bpm/PlasticMaze-v0",
    rule="simple",
    hidden_size=12,
    batch_size=4,
    env_kwargs={"episode_length": 15},
    seed=3,
    n_minibatches=2,
    n_epochs=2,
)


def test_gae_against_a_direct_sum():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, gamma, lam)
    v_next = torch.cat([values[:, 1:], torch.zeros(3, 1)], 1)  # V = 0 after the episode
    delta = rewards + gamma * v_next - values
    for t in range(7):
        direct = sum((gamma * lam) ** k * delta[:, t + k] for k in range(7 - t))
        torch.testing.assert_close(adv[:, t], direct)
    torch.testing.assert_close(ret, adv + values)
    # lambda = 1: Monte-Carlo returns minus the baseline
    adv1, ret1 = gae(rewards, values, gamma, 1.0)
    torch.testing.assert_close(ret1, discounted_returns(rewards, gamma))


def test_ppo_loss_by_hand_clips_the_ratio_and_normalises_advantages():
    # two steps, two actions; new probabilities [0.8, 0.2] at both steps, action 0 taken
    logits = torch.log(torch.tensor([[[0.8, 0.2], [0.8, 0.2]]]))
    actions = torch.tensor([[0, 0]])
    old = torch.log(torch.tensor([[0.5, 0.7]]))  # ratios 1.6 and 0.8/0.7 = 1.142857
    adv = torch.tensor([[1.0, -1.0]])  # normalised: [0.70711, -0.70711] (std with n - 1)
    values, returns, old_values = (
        torch.tensor([[0.5, 0.0]]),
        torch.tensor([[1.0, 1.0]]),
        torch.tensor([[0.0, 0.0]]),
    )
    t = ppo_loss(
        logits,
        values,
        actions,
        old,
        adv,
        returns,
        old_values,
        clip_range=0.2,
        value_coef=0.5,
        entropy_coef=0.0,
        normalize_advantage=True,
    )
    a = 1 / math.sqrt(2)
    # step 0: min(1.6 a, 1.2 a) = 1.2 a; step 1: min(-1.142857 a, -1.142857 a) (inside the clip)
    expected_policy = -(1.2 * a + (-(0.8 / 0.7) * a)) / 2
    assert t.policy.item() == pytest.approx(expected_policy, rel=1e-5)
    assert t.value.item() == pytest.approx(0.5 * (0.25 + 1.0) / 2, rel=1e-6)
    assert t.clip_fraction.item() == pytest.approx(0.5)
    # value clipping around the old value: 0.5 may move only 0.1 -> error max(0.25, 0.81)
    tc = ppo_loss(
        logits,
        values,
        actions,
        old,
        adv,
        returns,
        old_values,
        value_clip=0.1,
        value_coef=1.0,
        entropy_coef=0.0,
    )
    assert tc.value.item() == pytest.approx((0.81 + 1.0) / 2, rel=1e-6)
    # without normalisation the raw advantages are used
    tr = ppo_loss(
        logits, values, actions, old, adv, returns, old_values, entropy_coef=0.0, normalize_advantage=False
    )
    assert tr.policy.item() == pytest.approx(-(1.2 - 0.8 / 0.7) / 2, rel=1e-5)
    # entropy bonus: -coef * H, H of [0.8, 0.2]
    te = ppo_loss(logits, values, actions, old, adv, returns, old_values, entropy_coef=0.1)
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert te.entropy.item() == pytest.approx(-0.1 * h, rel=1e-5)


def test_first_minibatch_reuses_the_acting_forward():
    trainer = PlasticPPOTrainer(PPOConfig(**TINY))
    rollout = trainer.collect()
    assert rollout.record is not None
    old_log_probs, old_values = trainer.score(rollout)
    idx = torch.tensor([2, 0])
    out = trainer.policy.unroll_recorded(rollout.obs[idx], rollout.record.select(idx))
    # the heads see exactly the activities recorded while acting (no second forward)
    hidden = rollout.record.x[idx]
    assert torch.equal(out.logits.detach(), trainer.policy.policy_head(hidden).detach())
    assert torch.equal(out.values.detach(), trainer.policy.value_head(hidden).squeeze(-1).detach())
    # against the whole-batch scoring only BLAS rounding can differ (a GEMM's blocking depends
    # on its row count, and on some CPUs a 2-row head differs from a B-row one in the last bit)
    taken = torch.log_softmax(out.logits, -1).gather(-1, rollout.actions[idx].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(taken.detach(), old_log_probs[idx], rtol=0, atol=1e-6)  # ratio 1
    torch.testing.assert_close(out.values.detach(), old_values[idx], rtol=0, atol=1e-6)
    # and the replay with the same parameters agrees to rounding
    replay = trainer.policy.unroll(rollout.obs[idx], trainer.policy.initial_state(2))
    torch.testing.assert_close(replay.values.detach(), old_values[idx], rtol=1e-5, atol=1e-6)


def test_update_changes_the_policy_and_reports_metrics():
    trainer = PlasticPPOTrainer(PPOConfig(**TINY))
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    metrics = trainer.update()
    assert metrics["update"] == 1 and math.isfinite(metrics["loss"])
    assert 0 <= trainer.last_stats["clip_fraction"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


def test_resume_is_bit_for_bit(tmp_path):
    cfg = PPOConfig(**TINY)
    train(cfg, tmp_path / "straight", 4, progress=False, tensorboard=False)
    train(cfg, tmp_path / "resumed", 2, progress=False, tensorboard=False)
    train(None, tmp_path / "resumed", 4, resume=True, progress=False, tensorboard=False)
    rows = [(tmp_path / d / "progress.csv").read_text().splitlines() for d in ("straight", "resumed")]
    strip = lambda lines: [",".join(row.split(",")[:3] + row.split(",")[4:]) for row in lines]  # noqa: E731
    assert strip(rows[0]) == strip(rows[1])  # everything but the wall time
    a, b = load_trainer(tmp_path / "straight"), load_trainer(tmp_path / "resumed")
    assert isinstance(a, PlasticPPOTrainer) and a.updates_done == 4
    for p, q in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(clip_range=-0.1), "clip_range must be a finite number > 0, got -0.1"),
        (dict(gae_lambda=1.5), "gae_lambda must be in"),
        (dict(n_epochs=0), "n_epochs must be an integer >= 1, got 0"),
        (dict(n_minibatches=5), r"n_minibatches must be an integer from 1 to batch_size \(4\), got 5"),
        (dict(value_clip=0.0), "value_clip must be a finite number > 0 or None, got 0.0"),
        (dict(advantage_scope="batch"), "advantage_scope must be one of minibatch, rollout, got 'batch'"),
        (dict(minibatch_unit="step"), "minibatch_unit must be one of episodes, steps, got 'step'"),
        (dict(minibatch_unit="steps", n_minibatches=0), "n_minibatches must be an integer >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused_with_the_value(bad, match):
    with pytest.raises(ValueError, match=match):
        PPOConfig(**{**TINY, **bad}).resolve()


def test_command_line_trains_resumes_and_evaluates_plastic_ppo(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    base = [
        sys.executable,
        str(root / "train.py"),
        "--algo",
        "plastic-ppo",
        "--env",
        "bpm/PlasticMaze-v0",
        "--plasticity",
        "retroactive",
        "--hidden-size",
        "8",
        "--batch-size",
        "3",
        "--minibatches",
        "3",
        "--env-kwargs",
        '{"episode_length": 10}',
        "--no-progress",
        "--no-tensorboard",
        "--threads",
        "1",
    ]
    r = subprocess.run([*base, "--updates", "1", "--out", str(out)], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["algo"] == "plastic-ppo"
    r = subprocess.run(
        [
            sys.executable,
            str(root / "train.py"),
            "--out",
            str(out),
            "--resume",
            "--updates",
            "2",
            "--no-progress",
            "--no-tensorboard",
        ],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert r.returncode == 0 and "2 updates" in r.stdout, r.stderr
    r = subprocess.run(
        [sys.executable, str(root / "evaluate.py"), str(out), "--episodes", "3", "--json"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["algo"] == "plastic-ppo"
    r = subprocess.run(
        [*base, "--clip-range", "-1", "--updates", "1", "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert r.returncode == 2 and "clip_range must be a finite number > 0, got -1.0" in r.stderr
    assert "Traceback" not in r.stderr


def test_normalized_has_mean_zero_and_unit_std():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, unbiased std sqrt(14/3)
    torch.testing.assert_close(normalized(x), (x - 3.0) / (math.sqrt(14 / 3) + 1e-8))
    assert torch.equal(normalized(torch.tensor([5.0])), torch.tensor([0.0]))


def _parameters_after_one_update(**overrides) -> list[torch.Tensor]:
    trainer = PlasticPPOTrainer(PPOConfig(**{**TINY, **overrides}))
    trainer.update()
    return [p.detach().clone() for p in trainer.policy.parameters()]


def test_advantage_scope_rollout_normalises_once_over_the_whole_rollout():
    # one minibatch is the whole rollout: both scopes normalise the same advantages
    one = [_parameters_after_one_update(n_minibatches=1, advantage_scope=s) for s in ("minibatch", "rollout")]
    for p, q in zip(*one):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    # one episode per minibatch: per-minibatch statistics differ from the rollout's
    four = [
        _parameters_after_one_update(n_minibatches=4, advantage_scope=s) for s in ("minibatch", "rollout")
    ]
    assert max((p - q).abs().max().item() for p, q in zip(*four)) > 1e-4


def test_step_minibatches_of_the_whole_rollout_take_the_full_batch_step():
    # one minibatch of all B * T pairs (in shuffled order) is the same mean loss as one of all episodes
    whole = [_parameters_after_one_update(n_minibatches=1, minibatch_unit=u) for u in ("episodes", "steps")]
    for p, q in zip(*whole):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_step_minibatches_partition_each_epoch_and_replay_every_episode(monkeypatch):
    trainer = PlasticPPOTrainer(PPOConfig(**{**TINY, "minibatch_unit": "steps", "n_minibatches": 7}))
    rollout = trainer.collect()
    B, T = rollout.actions.shape  # 4 x 15: 60 pairs in minibatches of 8 or 9
    seen: list[torch.Tensor] = []
    picked: dict[int, torch.Tensor] = {}  # the pair indices of each minibatch
    replayed: list[int] = []
    real_loss, real_unroll, real_steps_of = ppo.ppo_loss, trainer.policy.unroll, ppo._steps_of

    def spy_loss(logits, values, actions, *rest, **kw):
        seen.append(actions)
        return real_loss(logits, values, actions, *rest, **kw)

    def spy_steps_of(x, idx):
        picked[len(seen)] = idx
        return real_steps_of(x, idx)

    def spy_unroll(obs, *args, **kw):
        replayed.append(obs.shape[0])
        return real_unroll(obs, *args, **kw)

    monkeypatch.setattr(ppo, "ppo_loss", spy_loss)
    monkeypatch.setattr(ppo, "_steps_of", spy_steps_of)
    monkeypatch.setattr(trainer.policy, "unroll", spy_unroll)
    trainer.learn(rollout)
    assert len(seen) == 2 * 7 and [a.shape for a in seen[:7]] == [(1, 9)] * 4 + [(1, 8)] * 3
    # the first minibatch reuses the acting record; every later one replays all B episodes
    assert replayed == [B] * (2 * 7 - 1)
    for epoch in (range(7), range(7, 14)):  # each epoch uses each (episode, step) pair once
        assert torch.equal(torch.cat([picked[k] for k in epoch]).sort().values, torch.arange(B * T))
    for k, actions in enumerate(seen):  # and the loss sees those pairs' data
        assert torch.equal(actions[0], rollout.actions.reshape(-1)[picked[k]])


def test_step_minibatches_are_bounded_by_the_rollout_and_resume_bit_for_bit(tmp_path):
    with pytest.raises(
        ValueError, match=r"n_minibatches must be at most batch_size \* episode length \(60\)"
    ):
        PlasticPPOTrainer(PPOConfig(**{**TINY, "minibatch_unit": "steps", "n_minibatches": 61}))
    cfg = PPOConfig(**{**TINY, "minibatch_unit": "steps", "n_minibatches": 5, "detach_value": True})
    train(cfg, tmp_path / "straight", 3, progress=False, tensorboard=False)
    train(cfg, tmp_path / "resumed", 1, progress=False, tensorboard=False)
    train(None, tmp_path / "resumed", 3, resume=True, progress=False, tensorboard=False)
    a, b = load_trainer(tmp_path / "straight"), load_trainer(tmp_path / "resumed")
    assert a.policy.config.detach_value and b.policy.config.detach_value
    for p, q in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(p, q)


def test_detach_value_keeps_the_values_and_stops_their_gradient_at_the_head():
    plain = PlasticPPOTrainer(PPOConfig(**TINY)).policy
    detached = PlasticPPOTrainer(PPOConfig(**{**TINY, "detach_value": True})).policy
    obs = torch.randn(3, 5, plain.config.obs_size, generator=torch.Generator().manual_seed(1))
    outs = [pol.unroll(obs, pol.initial_state(3), impl="reference") for pol in (plain, detached)]
    assert torch.equal(outs[0].values, outs[1].values) and torch.equal(outs[0].logits, outs[1].logits)
    for pol, out in zip((plain, detached), outs):
        pol.zero_grad()
        out.values.sum().backward()
        assert pol.value_head.weight.grad is not None and pol.value_head.weight.grad.abs().sum() > 0
        core = [q.grad for q in pol.core.parameters()]
        if pol is detached:
            assert all(g is None for g in core) and pol.policy_head.weight.grad is None
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in core)


def _params(trainer):
    return {k: v.clone() for k, v in trainer.policy.state_dict().items()}


@pytest.mark.parametrize("algo", ["a2c", "ppo"])
def test_grad_skip_drops_the_steps_above_it_and_is_inert_below(algo):
    from bpm_agents.a2c import A2CConfig, A2CTrainer

    def make(**kw):
        if algo == "ppo":
            return PlasticPPOTrainer(PPOConfig(**TINY, **kw))
        return A2CTrainer(
            A2CConfig(**{k: v for k, v in TINY.items() if k in A2CConfig.__dataclass_fields__}, **kw)
        )

    base, high, low = make(), make(grad_skip=1e30), make(grad_skip=1e-12)
    before = _params(low)
    m_base, m_high, m_low = base.update(), high.update(), low.update()
    steps = base.config.n_epochs * base.config.n_minibatches if algo == "ppo" else 1
    # far above every norm: the very same run, bit for bit
    assert m_high["skipped_steps"] == m_base["skipped_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(_params(base).values(), _params(high).values()))
    # below every norm: every step is skipped, the weights and Adam's state stay as they were
    assert m_low["skipped_steps"] == steps and m_low["grad_norm"] > 1e-12
    assert all(torch.equal(before[k], v) for k, v in _params(low).items())
    assert low.optimizer.state_dict()["state"] == {}
    assert low.updates_done == 1  # the update itself counts: it acted and logged


def test_an_infinite_gradient_is_skipped_with_grad_skip_and_fails_without():
    from bpm_agents.a2c import NonFiniteLossError

    for grad_skip in (1e3, None):
        trainer = PlasticPPOTrainer(PPOConfig(**TINY, grad_skip=grad_skip))
        trainer.policy.policy_head.weight.register_hook(lambda g: torch.full_like(g, math.inf))
        before = _params(trainer)
        if grad_skip is None:
            with pytest.raises(NonFiniteLossError, match="gradient norm is inf at update 1"):
                trainer.update()
        else:
            assert trainer.update()["skipped_steps"] == trainer.config.n_epochs * trainer.config.n_minibatches
        assert all(torch.equal(before[k], v) for k, v in _params(trainer).items())


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_grad_skip_is_refused_with_the_value(bad):
    with pytest.raises(ValueError, match=r"grad_skip must be a finite number > 0 or None, got"):
        PPOConfig(**TINY, grad_skip=bad).resolve()


@pytest.mark.parametrize("algo", ["a2c", "ppo"])
def test_modulator_penalty_adds_its_term_through_the_kernel_and_spares_unmodulated_rules(algo):
    from bpm_agents.a2c import A2CConfig, A2CTrainer
    from bpm_agents.plasticity import modulator_saturation

    def make(rule="simple", impl="auto", **kw):
        cfg = {**TINY, "rule": rule, "unroll_impl": impl, "batch_size": 2, "n_minibatches": 1, "n_epochs": 1}
        cfg["grad_clip"] = 1e30  # the gradients as computed, not clipped
        if algo == "ppo":
            return PlasticPPOTrainer(PPOConfig(**cfg, **kw))
        return A2CTrainer(
            A2CConfig(**{k: v for k, v in cfg.items() if k in A2CConfig.__dataclass_fields__}, **kw)
        )

    c = 0.3
    grads = {}
    for impl in ("fast", "reference"):
        base, pen = make(impl=impl), make(impl=impl, modulator_penalty=c)
        rollout = base.collect()
        for t in (base, pen):
            t.optimizer.step = lambda: None  # keep the weights: compare the gradients
            t.learn(rollout)
        # the penalty's gradient alone: c * d saturation / d (modulator bias), by autograd on the replay
        out = base.policy.unroll(rollout.obs, base.policy.initial_state(2), impl="reference")
        bias = base.policy.core.synapses.modulator.bias
        (want,) = torch.autograd.grad(c * modulator_saturation(out.modulators), bias)
        got = pen.policy.core.synapses.modulator.bias.grad - base.policy.core.synapses.modulator.bias.grad
        grads[impl] = got
        assert want.abs().item() > 1e-4
        torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-6)
    torch.testing.assert_close(grads["fast"], grads["reference"], rtol=2e-3, atol=1e-6)
    # no modulator, no term: the same run bit for bit
    a, b = make(rule="hebbian"), make(rule="hebbian", modulator_penalty=c)
    ma, mb = a.update(), b.update()
    assert ma["loss"] == mb["loss"] and all(
        torch.equal(x, y) for x, y in zip(_params(a).values(), _params(b).values())
    )
