"""A2C: returns and loss against hand computations, act-then-replay consistency, determinism."""

import math

import pytest
import torch

from bpm_agents.a2c import (
    A2CConfig,
    A2CTrainer,
    a2c_loss,
    collect_rollout,
    discounted_returns,
)

SMALL = dict(batch_size=4, hidden_size=8, env_kwargs={"episode_length": 20})


def test_discounted_returns_by_hand():
    r = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    R = discounted_returns(r, 0.5)
    assert torch.allclose(R, torch.tensor([[1.5, 1.0, 2.0], [0.25, 0.5, 1.0]]))


def hand_episode():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]], requires_grad=True)  # pi = .5/.5, .75/.25
    values = torch.tensor([[0.5, 1.0]], requires_grad=True)
    actions = torch.tensor([[0, 1]])
    returns = torch.tensor([[1.0, 0.0]])  # advantages 0.5, -1
    return logits, values, actions, returns


def test_a2c_loss_sum_squares_by_hand():
    logits, values, actions, returns = hand_episode()
    terms = a2c_loss(logits, values, actions, returns, value_coef=0.1, entropy_coef=0.1)
    policy = -(math.log(0.5) * 0.5 + math.log(0.25) * -1.0) / 2
    value = 0.1 * (0.5**2 + 1.0**2) / 2
    squares = 0.1 * ((0.25 + 0.25) + (0.5625 + 0.0625)) / 2
    assert terms.policy.item() == pytest.approx(policy)
    assert terms.value.item() == pytest.approx(value)
    assert terms.entropy.item() == pytest.approx(squares)
    assert terms.total.item() == pytest.approx(policy + value + squares)


def test_a2c_loss_true_entropy_by_hand():
    logits, values, actions, returns = hand_episode()
    terms = a2c_loss(logits, values, actions, returns, 0.1, 0.2, entropy_mode="entropy")
    h1 = math.log(2.0)
    h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert terms.entropy.item() == pytest.approx(-0.2 * (h1 + h2) / 2)


def test_policy_term_does_not_train_the_value():
    logits, values, actions, returns = hand_episode()
    a2c_loss(logits, values, actions, returns).policy.backward()
    assert values.grad is None or torch.all(values.grad == 0)
    # the value term's gradient is 2 * coef * (V - R) / (B T)
    values.grad = None
    a2c_loss(logits, values, actions, returns, value_coef=0.1).value.backward()
    assert torch.allclose(values.grad, torch.tensor([[0.1 * 2 * -0.5 / 2, 0.1 * 2 * 1.0 / 2]]))


def test_task_defaults_follow_the_paper():
    cue = A2CConfig(env_id="bpm/CueReward-v0", rule="simple").resolve()
    assert (cue.hidden_size, cue.lr, cue.adam_eps, cue.grad_clip, cue.entropy_coef) == (
        200,
        1e-4,
        1e-6,
        2.0,
        0.1,
    )
    maze = A2CConfig(env_id="bpm/PlasticMaze-v0", rule="retroactive").resolve()
    assert (maze.hidden_size, maze.adam_eps, maze.grad_clip, maze.entropy_coef, maze.eta_e_init) == (
        100,
        1e-4,
        4.0,
        0.03,
        0.01,
    )
    assert A2CConfig(env_id="bpm/PlasticMaze-v0", rule="none").resolve().hidden_size == 139


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(env_id="bpm/Nope-v0"), "bpm/Nope-v0"),
        (dict(rule="oja"), "oja"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(entropy_mode="kl"), "kl"),
        (dict(gamma=1.5), "1.5"),
        (dict(weight_decay=-0.1), "weight_decay must be a finite number >= 0, got -0.1"),
        (dict(weight_decay=math.inf), "weight_decay must be a finite number >= 0, got inf"),
        (dict(modulator_penalty=-1.0), "modulator_penalty must be a finite number >= 0, got -1.0"),
        (dict(modulator_penalty=math.nan), "modulator_penalty must be a finite number >= 0, got nan"),
        (dict(modulator_bound=-0.5), "modulator_bound must be a finite number >= 0, got -0.5"),
    ],
)
def test_bad_config_is_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        A2CConfig(**bad).resolve()


@pytest.mark.parametrize("env_id", ["bpm/CueReward-v0", "bpm/PlasticMaze-v0"])
def test_replay_reproduces_the_acting_pass(env_id):
    trainer = A2CTrainer(A2CConfig(env_id=env_id, rule="retroactive", **SMALL))
    rollout = collect_rollout(trainer.policy, trainer.envs, trainer.generator)
    assert rollout.obs.shape == (4, 20, trainer.envs.single_observation_space.shape[0])
    assert rollout.actions.shape == rollout.rewards.shape == rollout.modulators.shape == (4, 20)
    out = trainer.policy.unroll(rollout.obs, trainer.policy.initial_state(4))
    # the replay with autograd sees exactly what the policy saw while acting
    assert torch.allclose(out.modulators, rollout.modulators, atol=1e-6)
    # observations record the previous action one-hot: consistent with the recorded actions
    n_act = trainer.envs.single_action_space.n
    prev_onehot = rollout.obs[:, 1:, -1 - n_act : -1]
    assert torch.equal(prev_onehot.argmax(-1), rollout.actions[:, :-1])


def test_update_changes_parameters_and_reports_metrics():
    trainer = A2CTrainer(A2CConfig(rule="simple", **SMALL))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    metrics = trainer.update()
    assert metrics["update"] == 1 and math.isfinite(metrics["loss"])
    assert 0 < metrics["modulator_abs_mean"] <= 1  # tanh modulator
    changed = [k for k, v in trainer.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert (
        "core.w" in changed
        and "core.synapses.alpha" in changed
        and "core.synapses.modulator.weight" in changed
    )


def test_weight_decay_shrinks_the_matrices_only():
    # with zero gradients Adam's step is 0, so one AdamW step is exactly the decoupled decay
    # p <- p * (1 - lr * wd) on the matrices, and leaves biases and the Hebbian rate alone
    lr, wd = 1e-2, 0.5
    trainer = A2CTrainer(A2CConfig(rule="simple", lr=lr, weight_decay=wd, **SMALL))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    for p in trainer.policy.parameters():
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    after = trainer.policy.state_dict()
    decayed = {k for k, v in before.items() if v.ndim >= 2}
    assert {"core.w", "core.synapses.alpha", "core.input.weight", "policy_head.weight"} <= decayed
    for k, v in before.items():
        expected = v * (1 - lr * wd) if k in decayed else v
        assert torch.allclose(after[k], expected, rtol=0, atol=1e-7), k
    assert not torch.equal(after["core.w"], before["core.w"])
    assert torch.equal(after["core.input.bias"], before["core.input.bias"])


def test_no_weight_decay_is_plain_adam():
    # the default keeps the optimizer (and so the checkpoints) of runs made before the option
    trainer = A2CTrainer(A2CConfig(rule="simple", **SMALL))
    assert type(trainer.optimizer) is torch.optim.Adam and len(trainer.optimizer.param_groups) == 1
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0


def test_same_seed_same_run_and_state_dict_resumes_exactly():
    cfg = A2CConfig(rule="retroactive", seed=3, **SMALL)
    a, b = A2CTrainer(cfg), A2CTrainer(cfg)
    ma = [a.update() for _ in range(3)]
    mb = [b.update() for _ in range(2)]
    # resume a fresh trainer from b's state: it must continue exactly like a
    c = A2CTrainer(cfg)
    c.load_state_dict(b.state_dict())
    mc = c.update()
    assert ma[:2] == mb
    assert mc == ma[2]
    for k, v in a.policy.state_dict().items():
        assert torch.equal(v, c.policy.state_dict()[k]), k
    other = A2CTrainer(A2CConfig(rule="retroactive", seed=4, **SMALL)).update()
    assert other != ma[0]


def test_configs_round_trip_and_refuse_unknown_keys():
    from bpm_agents.sb3 import SB3Config

    a2c = A2CConfig(env_id="bpm/PlasticMaze-v0", rule="simple").resolve()
    assert A2CConfig.from_dict(a2c.to_dict()) == a2c
    with pytest.raises(ValueError, match=r"unknown A2CConfig keys: \['colour'\]"):
        A2CConfig.from_dict({**a2c.to_dict(), "colour": 1})
    sb3 = SB3Config(algo="ppo", env_id="bpm/CueReward-v0").resolve()
    assert SB3Config.from_dict(sb3.to_dict()) == sb3
    with pytest.raises(ValueError, match="unknown SB3Config keys"):
        SB3Config.from_dict({"algo": "ppo", "n_layers": 3})


@pytest.mark.parametrize(
    "env_id,rule",
    [("bpm/CueReward-v0", "retroactive"), ("bpm/PlasticMaze-v0", "none"), ("bpm/PlasticMaze-v0", "hebbian")],
)
def test_learning_from_the_acting_record_equals_the_replay(env_id, rule):
    """Act once, learn once: the gradients of the A2C loss from the acting record equal those of
    replaying the episodes (float32, rounding only), for the policy, value and plastic weights."""
    trainer = A2CTrainer(A2CConfig(env_id=env_id, rule=rule, hidden_size=24, batch_size=3, seed=1))
    rollout = trainer.collect()
    assert rollout.record is not None

    def grads(r):
        trainer.optimizer.zero_grad(set_to_none=True)
        terms, _ = trainer.compute_loss(r)
        terms.total.backward()
        return terms.total.item(), {n: p.grad.clone() for n, p in trainer.policy.named_parameters()}

    loss_rec, g_rec = grads(rollout)
    loss_rep, g_rep = grads(rollout._replace(record=None))
    assert loss_rec == pytest.approx(loss_rep, rel=1e-5)
    for name in g_rep:
        torch.testing.assert_close(g_rec[name], g_rep[name], rtol=1e-4, atol=1e-6, msg=name)
