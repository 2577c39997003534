"""The plasticity rules against hand-computed numbers on tiny networks."""

import math

import pytest
import torch

from bpm_agents.networks import PlasticRNN
from bpm_agents.plasticity import PlasticityConfig, PlasticState, PlasticSynapses


@pytest.fixture(autouse=True)
def float64_default():
    """Hand computations are compared in double precision; restore the default afterwards."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def synapses(rule: str, **kw) -> PlasticSynapses:
    syn = PlasticSynapses(2, 2, 2, PlasticityConfig(rule=rule, **kw))
    with torch.no_grad():
        if hasattr(syn, "modulator"):
            syn.modulator.weight.copy_(torch.tensor([[1.0, 0.0]]))  # M = tanh(z_0)
            syn.modulator.bias.zero_()
    return syn


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_contribution_is_pre_times_alpha_hebb():
    syn = synapses("hebbian")
    with torch.no_grad():
        syn.alpha.copy_(t([0.1, 0.2], [0.3, 0.4]))
    hebb = t([[1.0, 0.0], [0.5, -1.0]])
    out = syn.contribution(t([1.0, 2.0]), hebb)
    # alpha*hebb = [[0.1, 0], [0.15, -0.4]]; [1, 2] @ that = [0.4, -0.8]
    assert torch.allclose(out, t([0.4, -0.8]))


def test_none_rule_has_no_traces_and_no_contribution():
    syn = synapses("none")
    hebb, elig = syn.initial_traces(3)
    assert hebb.shape == (3, 0, 0) and elig.shape == (3, 0, 0)
    assert syn.contribution(torch.ones(3, 2), hebb) is None
    assert not any(True for _ in syn.parameters())


def test_hebbian_update_and_clip():
    syn = synapses("hebbian", eta_init=0.1)
    hebb, elig = syn.initial_traces(1)
    hebb, elig, m = syn.update(hebb, elig, t([1.0, -0.5]), t([0.5, 1.0]), t([0.0, 0.0]))
    assert m is None
    assert torch.allclose(hebb, t([[0.05, 0.1], [-0.025, -0.05]]))
    # a second step that would exceed the clip of 1 saturates at exactly 1
    with torch.no_grad():
        syn.eta.fill_(0.5)
    hebb0 = t([[[0.9, 0.0], [0.0, -0.9]]])
    hebb, _, _ = syn.update(hebb0, elig, t([1.0, 1.0]), t([1.0, -1.0]), t([0.0, 0.0]))
    # 0.9 + 0.5 -> clip 1.0 ; 0 - 0.5 ; 0 + 0.5 ; -0.9 - 0.5 -> clip -1.0
    assert torch.allclose(hebb, t([[1.0, -0.5], [0.5, -1.0]]))


def test_clip_value_is_configurable():
    syn = synapses("hebbian", eta_init=1.0, clip=2.0)
    hebb, elig = syn.initial_traces(1)
    hebb, _, _ = syn.update(hebb + 1.5, elig, t([1.0, 1.0]), t([1.0, 0.2]), t([0.0, 0.0]))
    assert torch.allclose(hebb, t([[2.0, 1.7], [2.0, 1.7]]))


def test_simple_neuromodulation_uses_m_from_the_modulator_input():
    syn = synapses("simple")
    hebb, elig = syn.initial_traces(1)
    pre, post, z = t([1.0, -0.5]), t([0.5, 1.0]), t([0.5, 0.3])
    hebb, elig, m = syn.update(hebb, elig, pre, post, z)
    m_expected = math.tanh(0.5)
    assert m.shape == (1, 1) and m.item() == pytest.approx(m_expected)
    assert torch.allclose(hebb, m_expected * t([[0.5, 1.0], [-0.25, -0.5]]))
    assert elig.numel() == 0


def test_identity_modulator_activation():
    syn = synapses("simple", modulator_activation="identity")
    hebb, elig = syn.initial_traces(1)
    hebb, _, m = syn.update(hebb, elig, t([1.0, 0.0]), t([1.0, 0.0]), t([0.3, 9.0]))
    assert m.item() == pytest.approx(0.3)
    assert hebb[0, 0, 0].item() == pytest.approx(0.3)


def test_fanout_gives_one_rate_per_post_neuron():
    syn = synapses("simple", fanout=True)
    with torch.no_grad():
        syn.fanout_weight.copy_(t(1.0, 2.0))
        syn.fanout_bias.copy_(t(0.1, -0.1))
    hebb, elig = syn.initial_traces(1)
    pre, post, z = t([1.0, -0.5]), t([0.5, 1.0]), t([0.5, 0.3])
    hebb, _, m = syn.update(hebb, elig, pre, post, z)
    mm = math.tanh(0.5)
    rate = [1.0 * mm + 0.1, 2.0 * mm - 0.1]  # eta_j = v_j M + u_j
    expected = t([[rate[0] * 0.5, rate[1] * 1.0], [rate[0] * -0.25, rate[1] * -0.5]])
    assert torch.allclose(hebb[0], expected)


def test_fanout_broadcasts_at_batch_size_one_and_many():
    syn = synapses("retroactive", fanout=True)
    torch.manual_seed(0)
    pre, post, z = torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2)
    hebb, elig = syn.initial_traces(5)
    elig = torch.randn(5, 2, 2) * 0.3
    batched, batched_e, _ = syn.update(hebb, elig, pre, post, z)
    for b in range(5):
        one, one_e, _ = syn.update(
            hebb[b : b + 1], elig[b : b + 1], pre[b : b + 1], post[b : b + 1], z[b : b + 1]
        )
        assert torch.allclose(one[0], batched[b]) and torch.allclose(one_e[0], batched_e[b])


def test_retroactive_order_eligibility_reaches_hebb_one_step_later():
    syn = synapses("retroactive", eta_e_init=0.1)
    hebb, elig = syn.initial_traces(1)
    z = t([0.5, 0.0])  # M = tanh(0.5) every step
    mm = math.tanh(0.5)
    p1 = (t([1.0, 0.0]), t([1.0, 0.5]))  # product [[1, .5], [0, 0]]
    p2 = (t([0.0, 1.0]), t([-1.0, 1.0]))  # product [[0, 0], [-1, 1]]
    hebb, elig, _ = syn.update(hebb, elig, *p1, z)
    # step 1: Hebb takes M * E(0) = 0; only E learns
    assert torch.equal(hebb, torch.zeros(1, 2, 2))
    e1 = 0.1 * t([[1.0, 0.5], [0.0, 0.0]])
    assert torch.allclose(elig[0], e1)
    hebb, elig, _ = syn.update(hebb, elig, *p2, z)
    # step 2: Hebb gets M * E(1) (not this step's product); E decays and takes product 2
    assert torch.allclose(hebb[0], mm * e1)
    e2 = 0.9 * e1 + 0.1 * t([[0.0, 0.0], [-1.0, 1.0]])
    assert torch.allclose(elig[0], e2)
    hebb, elig, _ = syn.update(hebb, elig, t([0.0, 0.0]), t([0.0, 0.0]), z)
    assert torch.allclose(hebb[0], mm * e1 + mm * e2)
    assert torch.allclose(elig[0], 0.9 * e2)


def test_retroactive_clip_saturates():
    syn = synapses("retroactive", eta_e_init=1.0)
    hebb, elig = syn.initial_traces(1)
    elig = torch.full((1, 2, 2), 5.0)
    hebb, _, _ = syn.update(hebb, elig, t([0.0, 0.0]), t([0.0, 0.0]), t([10.0, 0.0]))
    assert torch.allclose(hebb, torch.ones(1, 2, 2))  # tanh(10)*5 > 1 -> clipped to 1


def test_bad_config_is_rejected_with_the_value():
    with pytest.raises(ValueError, match="'oja'"):
        PlasticityConfig(rule="oja")
    with pytest.raises(ValueError, match="-1"):
        PlasticityConfig(clip=-1)
    with pytest.raises(ValueError, match="fanout"):
        PlasticityConfig(rule="hebbian", fanout=True)
    with pytest.raises(ValueError, match="'relu'"):
        PlasticityConfig(modulator_activation="relu")


def tiny_rnn(rule: str) -> PlasticRNN:
    net = PlasticRNN(2, 2, PlasticityConfig(rule=rule, eta_init=0.5, eta_e_init=0.5))
    with torch.no_grad():
        net.input.weight.copy_(t([1.0, 0.0], [0.0, 1.0]))
        net.input.bias.zero_()
        net.w.copy_(t([0.5, -0.5], [0.25, 0.0]))
        if rule != "none":
            net.synapses.alpha.copy_(t([1.0, 0.0], [0.0, 2.0]))
        if hasattr(net.synapses, "modulator"):
            net.synapses.modulator.weight.copy_(t([1.0, 1.0]))
            net.synapses.modulator.bias.fill_(0.1)
    return net


def test_rnn_two_steps_by_hand_hebbian():
    net = tiny_rnn("hebbian")
    state = net.initial_state(1)
    u1, u2 = t([1.0, 0.0]), t([0.0, 1.0])
    state, _ = net.step(u1, state)
    x1 = [math.tanh(1.0), 0.0]  # pre = 0 so only the input drives
    assert torch.allclose(state.hidden, t(x1))
    assert torch.equal(state.hebb, torch.zeros(1, 2, 2))  # pre was 0
    state, _ = net.step(u2, state)
    # drive = u2 + x1 @ w + x1 @ (alpha * 0)
    d = [0.0 + x1[0] * 0.5 + x1[1] * 0.25, 1.0 + x1[0] * -0.5]
    x2 = [math.tanh(d[0]), math.tanh(d[1])]
    assert torch.allclose(state.hidden, t(x2))
    hebb = [[0.5 * x1[i] * x2[j] for j in range(2)] for i in range(2)]
    assert torch.allclose(state.hebb[0], t(*hebb))
    # third step: the trace now adds x2 @ (alpha * hebb)
    state3, _ = net.step(t([0.0, 0.0]), state)
    plastic = [x2[0] * 1.0 * hebb[0][0] + x2[1] * 0.0 * hebb[1][0], x2[0] * 0.0 + x2[1] * 2.0 * hebb[1][1]]
    d3 = [x2[0] * 0.5 + x2[1] * 0.25 + plastic[0], x2[0] * -0.5 + plastic[1]]
    assert torch.allclose(state3.hidden, t([math.tanh(d3[0]), math.tanh(d3[1])]))


def test_rnn_modulator_reads_the_new_activity():
    net = tiny_rnn("simple")
    state, m = net.step(t([1.0, 0.5]), net.initial_state(1))
    x1 = [math.tanh(1.0), math.tanh(0.5)]
    assert m.item() == pytest.approx(math.tanh(x1[0] + x1[1] + 0.1))


@pytest.mark.parametrize("rule", ["none", "hebbian", "simple", "retroactive"])
def test_gradients_reach_every_parameter(rule):
    torch.manual_seed(1)
    cfg = PlasticityConfig(rule=rule, fanout=rule in ("simple", "retroactive"))
    net = PlasticRNN(3, 4, cfg)
    with torch.no_grad():
        if rule != "none":
            net.synapses.alpha.fill_(0.5)
    hidden, mods, _ = net.reference_unroll(torch.randn(2, 5, 3), net.initial_state(2))
    loss = hidden.pow(2).sum() + (mods.sum() if mods is not None else 0)
    loss.backward()
    names = {n for n, _ in net.named_parameters()}
    expected = {"input.weight", "input.bias", "w"}
    if rule != "none":
        expected |= {"synapses.alpha"}
    if rule == "hebbian":
        expected |= {"synapses.eta"}
    if rule in ("simple", "retroactive"):
        expected |= {
            "synapses.modulator.weight",
            "synapses.modulator.bias",
            "synapses.fanout_weight",
            "synapses.fanout_bias",
        }
    if rule == "retroactive":
        expected |= {"synapses.eta_e"}
    assert names == expected
    for n, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("rule", ["hebbian", "retroactive"])
def test_step_repeated_equals_unroll_with_resets(rule):
    torch.manual_seed(2)
    net = PlasticRNN(3, 4, PlasticityConfig(rule=rule))
    obs = torch.randn(2, 6, 3)
    starts = torch.zeros(2, 6, dtype=torch.bool)
    starts[1, 3] = True  # element 1 begins a new episode at step 3
    hidden, _, final = net.unroll(obs, net.initial_state(2), starts)
    # element 0: one episode of 6 steps
    state = net.initial_state(1)
    for k in range(6):
        state, _ = net.step(obs[0:1, k], state)
        assert torch.allclose(hidden[0, k], state.hidden[0])
    # element 1: steps 0-2, then a fresh episode for steps 3-5
    state = net.initial_state(1)
    for k in range(6):
        if k == 3:
            state = net.initial_state(1)
        state, _ = net.step(obs[1:2, k], state)
        assert torch.allclose(hidden[1, k], state.hidden[0])
    assert torch.allclose(final.hebb[1], state.hebb[0])


def test_reset_where_zeroes_only_selected_elements():
    s = PlasticState(torch.ones(3, 2), torch.ones(3, 2, 2), torch.ones(3, 2, 2))
    r = s.reset_where(torch.tensor([False, True, False]))
    assert r.hidden[:, 0].tolist() == [1, 0, 1]
    assert r.hebb.sum(dim=(1, 2)).tolist() == [4, 0, 4]
    assert r.elig.sum(dim=(1, 2)).tolist() == [4, 0, 4]


def test_initial_state_is_zero_and_batch_first():
    net = PlasticRNN(3, 5, PlasticityConfig(rule="retroactive"))
    s = net.initial_state(7)
    assert s.hidden.shape == (7, 5) and s.hebb.shape == (7, 5, 5) and s.elig.shape == (7, 5, 5)
    assert all(float(x.abs().sum()) == 0 for x in s)


# --- options added for the PTB study (issue 15) --------------------------------------------------


def test_fanout_accepts_old_booleans_and_the_three_modes():
    import json

    from bpm_agents.plasticity import Fanout

    assert PlasticityConfig(rule="simple", fanout=True).fanout == "neuron"
    assert PlasticityConfig(rule="simple", fanout=False).fanout == "none"
    assert not PlasticityConfig(rule="simple", fanout=False).fanout  # old `if cfg.fanout` checks
    assert PlasticityConfig(rule="simple", fanout="connection").fanout
    assert not Fanout("none") and Fanout("neuron")
    assert (int(Fanout("none")), int(Fanout("neuron"))) == (0, 1)  # as int(bool) did
    d = PlasticityConfig(rule="retroactive", fanout=True).to_dict()
    assert d["fanout"] == "neuron" and type(d["fanout"]) is str
    assert PlasticityConfig(**json.loads(json.dumps(d))) == PlasticityConfig(rule="retroactive", fanout=True)
    old = {"rule": "simple", "clip": 1.0, "fanout": True, "modulator_activation": "tanh", "alpha": "connection",
           "eta_init": 0.1, "eta_e_init": 0.1, "init_scale": 0.01}  # fmt: skip
    cfg = PlasticityConfig(**old)  # a config saved before the options existed
    assert (cfg.fanout, cfg.eta_shape, cfg.modulator_input, cfg.fanout_init, cfg.alpha_grad_scale) == (
        "neuron",
        "scalar",
        "new",
        "ones",
        1.0,
    )
    with pytest.raises(ValueError, match="fanout must be one of none, neuron, connection.*'edge'"):
        PlasticityConfig(rule="simple", fanout="edge")


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            dict(rule="hebbian", eta_shape="neuron"),
            "eta_shape must be one of scalar, connection, got 'neuron'",
        ),
        (dict(rule="simple", eta_shape="connection"), "needs the rule hebbian"),
        (
            dict(rule="simple", modulator_input="old"),
            "modulator_input must be one of new, previous, got 'old'",
        ),
        (dict(rule="simple", fanout=True, fanout_init="zeros"), "fanout_init must be one of ones, default"),
        (dict(rule="simple", alpha_grad_scale=0), "alpha_grad_scale must be a float > 0 or '1/N', got 0"),
        (dict(rule="simple", alpha_grad_scale="1/M"), "got '1/M'"),
        (dict(rule="simple", alpha_init=-1.0), "alpha_init must be >= 0"),
    ],
)
def test_bad_option_values_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        PlasticityConfig(**kw)


def test_per_connection_fanout_rate_and_update():
    syn = synapses("simple", fanout="connection")
    assert syn.fanout_weight.shape == (2, 2) and syn.fanout_bias.shape == (2, 2)
    with torch.no_grad():
        syn.fanout_weight.copy_(t([1.0, 2.0], [-1.0, 0.5]))
        syn.fanout_bias.copy_(t([0.1, 0.0], [0.0, -0.2]))
    z = t([0.5, 0.0])  # M = tanh(0.5)
    m = math.tanh(0.5)
    hebb, elig = syn.initial_traces(1)
    pre, post = t([1.0, -2.0]), t([0.3, 0.1])
    hebb, _, mod = syn.update(hebb, elig, pre, post, z)
    assert mod.item() == pytest.approx(m)
    V, U = [[1.0, 2.0], [-1.0, 0.5]], [[0.1, 0.0], [0.0, -0.2]]
    expected = [[max(-1.0, min(1.0, (V[i][j] * m + U[i][j]) * [1.0, -2.0][i] * [0.3, 0.1][j])) for j in range(2)]
                for i in range(2)]  # fmt: skip
    assert torch.allclose(hebb[0], t(*expected))


def test_per_connection_eta_update_and_gradient():
    syn = synapses("hebbian", eta_shape="connection", eta_init=0.1)
    assert syn.eta.shape == (2, 2) and torch.all(syn.eta == 0.1)
    with torch.no_grad():
        syn.eta.copy_(t([0.1, 0.2], [0.3, 4.0]))
    hebb, elig = syn.initial_traces(1)
    pre, post = t([1.0, -0.5]), t([0.5, 1.0])
    new, _, _ = syn.update(hebb, elig, pre, post, pre)
    # eta_ij * pre_i * post_j; (1, 1): 4 * -0.5 * 1 = -2 is clipped to -1
    assert torch.allclose(new[0], t([0.05, 0.2], [-0.075, -1.0]))
    new.sum().backward()
    # d/d eta_ij = pre_i post_j where the clip passes, 0 where it clamps
    assert torch.allclose(syn.eta.grad, t([0.5, 1.0], [-0.25, 0.0]))


def test_rnn_modulator_reads_previous_activity():
    cfg = PlasticityConfig(rule="simple", modulator_input="previous", fanout=True)
    net = PlasticRNN(3, 2, cfg)
    with torch.no_grad():
        net.synapses.modulator.weight.copy_(t([0.7, -0.4]))
        net.synapses.modulator.bias.fill_(0.1)
    state = net.initial_state(1)
    state = PlasticState(t([0.5, -0.25]), state.hebb, state.elig)
    new, m = net.step(t([1.0, 0.0, -1.0]), state)
    assert m.item() == pytest.approx(math.tanh(0.7 * 0.5 + 0.4 * 0.25 + 0.1))  # x(t-1), not x(t)
    reads_new = PlasticRNN(3, 2, PlasticityConfig(rule="simple", fanout=True))
    reads_new.load_state_dict(net.state_dict())
    new_too, m_new = reads_new.step(t([1.0, 0.0, -1.0]), state)
    x = new.hidden[0]
    torch.testing.assert_close(new_too.hidden, new.hidden)  # same activity; only M's input differs
    assert m_new.item() == pytest.approx(math.tanh(0.7 * x[0].item() - 0.4 * x[1].item() + 0.1))
    assert abs(m_new.item() - m.item()) > 1e-3


@pytest.mark.parametrize("scale, factor", [(0.25, 0.25), ("1/N", 1 / 3)])
def test_alpha_grad_scale_multiplies_only_alphas_gradient(scale, factor):
    torch.manual_seed(0)
    base = PlasticRNN(2, 3, PlasticityConfig(rule="retroactive", fanout=True))
    torch.manual_seed(0)
    scaled = PlasticRNN(2, 3, PlasticityConfig(rule="retroactive", fanout=True, alpha_grad_scale=scale))
    scaled.load_state_dict(base.state_dict())
    with torch.no_grad():
        for net in (base, scaled):
            net.synapses.alpha.fill_(0.5)
            net.w.fill_(0.3)
    u = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(1))
    outs = []
    for net in (base, scaled):
        x, _, _ = net.reference_unroll(u, net.initial_state(2))
        x.pow(2).sum().backward()
        outs.append(x)
    torch.testing.assert_close(outs[0], outs[1])  # the forward is unchanged
    torch.testing.assert_close(scaled.synapses.alpha.grad, factor * base.synapses.alpha.grad)
    torch.testing.assert_close(scaled.w.grad, base.w.grad)
    assert base.synapses.alpha.grad.abs().sum() > 0
    import copy
    import pickle

    for clone in (copy.deepcopy(scaled), pickle.loads(pickle.dumps(scaled))):  # the hook survives copies
        x, _, _ = clone.reference_unroll(u, clone.initial_state(2))
        x.pow(2).sum().backward()
        torch.testing.assert_close(clone.synapses.alpha.grad, factor * base.synapses.alpha.grad)


def test_alpha_init_is_separate_from_w_init_and_fanout_default_init_is_seeded():
    torch.manual_seed(3)
    net = PlasticRNN(2, 40, PlasticityConfig(rule="simple", init_scale=0.5, alpha_init=1e-4, fanout=True,
                                             fanout_init="default"))  # fmt: skip
    assert net.synapses.alpha.max() <= 1e-4 and net.synapses.alpha.min() >= 0
    assert net.w.max() > 0.1  # w keeps init_scale
    v, u = net.synapses.fanout_weight, net.synapses.fanout_bias
    assert v.abs().max() <= 1 and u.abs().max() <= 1
    assert (v > 0).any() and (v < 0).any()  # not one sign for every neuron (the "ones" init)
    torch.manual_seed(3)
    again = PlasticRNN(2, 40, PlasticityConfig(rule="simple", init_scale=0.5, alpha_init=1e-4, fanout=True,
                                               fanout_init="default"))  # fmt: skip
    torch.testing.assert_close(again.synapses.fanout_weight, v)
    ones = PlasticRNN(2, 4, PlasticityConfig(rule="simple", fanout=True))
    assert torch.all(ones.synapses.fanout_weight == 1) and torch.all(ones.synapses.fanout_bias == 0)


@pytest.mark.parametrize(
    "kw",
    [dict(rule="hebbian", eta_shape="connection"), dict(rule="simple", fanout="connection"),
     dict(rule="retroactive", fanout=True, modulator_input="previous")],
)  # fmt: skip
def test_rnn_options_outside_the_fast_kernel_run_the_reference(kw):
    torch.manual_seed(0)
    net = PlasticRNN(2, 3, PlasticityConfig(**kw, init_scale=0.5))
    u = torch.randn(2, 5, 2, generator=torch.Generator().manual_seed(1))
    auto = net.unroll(u, net.initial_state(2), impl="auto")
    ref = net.reference_unroll(u, net.initial_state(2))
    torch.testing.assert_close(auto[0], ref[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="impl='fast' is not available"):
        net.unroll(u, net.initial_state(2), impl="fast")


@pytest.mark.parametrize("rule", ["simple", "retroactive"])
def test_a_bound_on_m_is_the_same_network_as_smaller_alpha_and_a_wider_clip(rule, monkeypatch):
    # M = s * tanh(z) with traces clipped at c gives the activity of M = tanh(z) with alpha * s
    # and the clip at c / s (Hebb / s obeys the second rule), so bounding |M| below 1 only
    # reparametrizes alpha and the clip: what it changes in training is how the optimizer moves alpha
    s, c = 0.25, 0.3
    torch.manual_seed(0)
    bounded = PlasticRNN(3, 6, PlasticityConfig(rule=rule, clip=c, init_scale=0.5, eta_e_init=0.5))
    plain = PlasticRNN(3, 6, PlasticityConfig(rule=rule, clip=c / s, init_scale=0.5, eta_e_init=0.5))
    plain.load_state_dict(bounded.state_dict())
    with torch.no_grad():
        plain.synapses.alpha.mul_(s)
        for net in (bounded, plain):
            net.synapses.modulator.weight.mul_(20.0)  # a saturating modulator: the clip is reached
    u = 3.0 * torch.randn(2, 40, 3)
    hidden, _, state = plain.unroll(u, plain.initial_state(2), impl="reference")
    tanh_m = PlasticSynapses.modulation
    monkeypatch.setattr(PlasticSynapses, "modulation", lambda self, x: s * tanh_m(self, x))
    hidden_b, _, state_b = bounded.unroll(u, bounded.initial_state(2), impl="reference")
    assert (state_b.hebb.abs() == c).any()  # the equivalence covers the clip too
    torch.testing.assert_close(hidden_b, hidden, rtol=0, atol=1e-12)
    torch.testing.assert_close(state_b.hebb / s, state.hebb, rtol=0, atol=1e-12)


def test_modulator_saturation_is_the_mean_square_pre_activation_with_gradient_2u():
    from bpm_agents.plasticity import modulator_saturation

    u = torch.tensor([[0.5, -2.0], [3.0, 0.0]], dtype=torch.float64, requires_grad=True)
    sat = modulator_saturation(torch.tanh(u))
    assert sat.item() == pytest.approx((0.25 + 4 + 9 + 0) / 4, rel=1e-3)  # M scaled by 1 - 1e-6
    (g,) = torch.autograd.grad(sat, u)
    torch.testing.assert_close(g, 2 * u.detach() / 4, rtol=1e-3, atol=1e-6)  # largest where M saturates
    # M rounded to +-1 stays finite; the identity modulator is its own pre-activation
    assert math.isfinite(modulator_saturation(torch.tensor([1.0, -1.0])).item())
    assert modulator_saturation(torch.tensor([1.5, -0.5]), "identity").item() == pytest.approx(1.25)
    # with a bound only the excess of |u| over it counts: (2 - 1)^2 and (3 - 1)^2 of four elements
    bounded = modulator_saturation(torch.tanh(u), bound=1.0)
    assert bounded.item() == pytest.approx((1 + 4) / 4, rel=1e-3)
    (g,) = torch.autograd.grad(bounded, u)
    want = torch.tensor([[0.0, -0.5], [1.0, 0.0]], dtype=torch.float64)  # 2 (|u| - 1) sign(u) / 4
    torch.testing.assert_close(g, want, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="unknown modulator activation 'relu'"):
        modulator_saturation(torch.zeros(2), "relu")
