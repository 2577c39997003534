"""The fast unroll (bpm_agents/ops/plastic_rnn.py) against the reference (PlasticRNN.reference_unroll).

Every rule and option, saturated clipping, resets in the middle of the batch, gradients w.r.t. every
parameter, the inputs and the initial state; float64 for tight checks, float32 at the paper's sizes.
"""

from __future__ import annotations

import copy
import ctypes
import itertools
import os

import numpy as np
import pytest
import torch

from bpm_agents.networks import PlasticRNN
from bpm_agents.ops import plastic_rnn as fast_unroll
from bpm_agents.plasticity import PlasticityConfig, PlasticState

DISABLED = os.environ.get("BPM_DISABLE_FAST_UNROLL", "") not in ("", "0")
pytestmark = pytest.mark.skipif(DISABLED, reason="fast unroll disabled by BPM_DISABLE_FAST_UNROLL")


def _configs():
    out = []
    for rule in ("none", "hebbian", "simple", "retroactive"):
        fanouts = (False, True) if rule in ("simple", "retroactive") else (False,)
        for fanout, act, alpha in itertools.product(fanouts, ("tanh", "identity"), ("connection", "neuron")):
            if rule == "none" and (act, alpha) != ("tanh", "connection"):
                continue  # options without effect on the rule `none`
            out.append(
                PlasticityConfig(rule=rule, clip=0.6, fanout=fanout, modulator_activation=act, alpha=alpha)
            )
    return out


CONFIGS = _configs()


def _problem(cfg, B=4, T=13, N=7, D=5, dtype=torch.float64, seed=0, scale=1.0, starts=True):
    """A random network with large weights (so traces hit the clip), random initial state."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = PlasticRNN(D, N, cfg).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=dtype))
    inputs = (2 * torch.randn(B, T, D, generator=g, dtype=dtype)).requires_grad_()
    h0 = torch.randn(B, N, generator=g, dtype=dtype).requires_grad_()
    st = net.initial_state(B)
    hebb = (0.5 * torch.randn(st.hebb.shape, generator=g, dtype=dtype)).clamp(-cfg.clip, cfg.clip)
    elig = 0.5 * torch.randn(st.elig.shape, generator=g, dtype=dtype)
    hebb.requires_grad_(cfg.plastic)
    elig.requires_grad_(cfg.eligibility)
    episode_starts = None
    if starts:
        episode_starts = torch.rand(B, T, generator=g) < 0.15
        episode_starts[0, 0] = True  # a reset at the very first step
        episode_starts[1, 0] = False  # and an element that carries its initial state
        episode_starts[1, T // 2] = True  # a reset in the middle of the batch
    return net, inputs, PlasticState(h0, hebb, elig), episode_starts


def _run(net, inputs, state, episode_starts, impl, checkpoint_every=None):
    """Forward + a loss touching every output; returns outputs and all gradients."""
    leaves = [inputs, *[t for t in state if t.requires_grad]]
    for t in leaves:
        t.grad = None
    net.zero_grad(set_to_none=True)
    if impl == "reference":
        hidden, mods, final = net.reference_unroll(inputs, state, episode_starts)
    elif impl == "chunked":
        hidden, mods, final = net.chunked_unroll(inputs, state, episode_starts, chunk=checkpoint_every)
    else:
        hidden, mods, final = fast_unroll.unroll(net, inputs, state, episode_starts, checkpoint_every)
    B, T, N = hidden.shape
    weights = torch.linspace(-1, 1, N, dtype=hidden.dtype)
    loss = (hidden * weights).sum() + hidden.pow(2).sum() + final.hidden.sum()
    if mods is not None:
        loss = loss + (mods * torch.arange(T, dtype=hidden.dtype)).sum()
    if net.plasticity.plastic:
        loss = loss + 0.3 * final.hebb.pow(2).sum()
    if net.plasticity.eligibility:
        loss = loss + 1.7 * final.elig.sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    grads["inputs"] = inputs.grad.clone()
    for name, t in zip(("h0", "hebb0", "elig0"), state):
        if t.requires_grad:
            grads[name] = t.grad.clone()
    outs = {"hidden": hidden.detach(), "final_hidden": final.hidden.detach()}
    if mods is not None:
        outs["modulators"] = mods.detach()
    if net.plasticity.plastic:
        outs["hebb"] = final.hebb.detach()
    if net.plasticity.eligibility:
        outs["elig"] = final.elig.detach()
    return outs, grads


def _assert_match(ref: dict, fast: dict, rtol: float) -> None:
    assert ref.keys() == fast.keys()
    for name in ref:
        r, f = ref[name], fast[name]
        assert r.shape == f.shape, name
        scale = r.abs().max().item()
        err = (r - f).abs().max().item()
        assert err <= rtol * max(scale, 1e-12), f"{name}: max error {err:.3g}, scale {scale:.3g}"


def test_kernel_builds():
    assert fast_unroll.kernel_available(), fast_unroll._KERNEL.error


@pytest.mark.parametrize(
    "cfg", CONFIGS, ids=lambda c: f"{c.rule}-fan{int(c.fanout)}-{c.modulator_activation}-{c.alpha}"
)
@pytest.mark.parametrize("checkpoint_every", [4, 16])
def test_matches_reference_float64(cfg, checkpoint_every):
    net, inputs, state, starts = _problem(cfg)
    ref_out, ref_grads = _run(net, inputs, state, starts, "reference")
    fast_out, fast_grads = _run(net, inputs, state, starts, "fast", checkpoint_every)
    _assert_match(ref_out, fast_out, 1e-12)
    _assert_match(ref_grads, fast_grads, 1e-10)
    # every parameter receives a real gradient
    for name, p in net.named_parameters():
        assert fast_grads[name].abs().max() > 0, name
    if cfg.plastic:  # the problem really exercises the clip
        saturated = (ref_out["hebb"].abs() == cfg.clip).double().mean().item()
        assert saturated > 0.05, saturated


@pytest.mark.parametrize("B", [2, 5, 13])
def test_plain_rnn_blocks_of_elements_match_reference_with_resets(B):
    """Rule none runs elements in blocks (8, then 4 at a time in the product with w): any B, with
    resets inside the episodes, gives the reference's outputs and gradients."""
    cfg = PlasticityConfig(rule="none")
    net, inputs, state, starts = _problem(cfg, B=B, T=17, N=21)
    ref_out, ref_grads = _run(net, inputs, state, starts, "reference")
    fast_out, fast_grads = _run(net, inputs, state, starts, "fast", 4)
    _assert_match(ref_out, fast_out, 1e-12)
    _assert_match(ref_grads, fast_grads, 1e-10)


def test_saturated_clip_blocks_gradient_like_reference():
    """Huge alpha and inputs: nearly every trace sits at the clip; gradients still agree."""
    cfg = PlasticityConfig(rule="simple", clip=0.3, modulator_activation="identity")
    net, inputs, state, starts = _problem(cfg, scale=3.0)
    ref_out, ref_grads = _run(net, inputs, state, starts, "reference")
    fast_out, fast_grads = _run(net, inputs, state, starts, "fast", 3)
    assert (ref_out["hebb"].abs() == 0.3).double().mean() > 0.5
    _assert_match(ref_out, fast_out, 1e-12)
    _assert_match(ref_grads, fast_grads, 1e-10)


@pytest.mark.parametrize(
    "rule,N,T,fanout",
    [("retroactive", 200, 60, False), ("simple", 100, 100, True), ("hebbian", 64, 50, False)],
)
def test_float32_paper_sizes_as_accurate_as_reference(rule, N, T, fanout):
    """float32 at the paper's N (B and T reduced to keep the test fast), trained-looking weights.

    Over 100-200 steps of a recurrent map, float32 rounding is amplified, so two float32
    implementations can differ by more than 1e-5 without either being wrong. The check is therefore
    against float64 (the fast path in float64 equals the reference to 1e-12, tests above): the fast
    float32 result must be within 1e-5 relative of it, or at worst no further than twice the
    reference float32 result is.
    """
    torch.manual_seed(1)
    cfg = PlasticityConfig(rule=rule, fanout=fanout)
    net = PlasticRNN(25, N, cfg)
    with torch.no_grad():  # trained-looking but not chaotic (chaos would amplify rounding)
        net.synapses.alpha.mul_(10.0)
        net.w.add_(0.02 * torch.randn(N, N))
    inputs = torch.randn(2, T, 25)
    starts = torch.zeros(2, T, dtype=torch.bool)
    starts[1, T // 3] = True
    net64 = copy.deepcopy(net).double()
    runs = {}
    for name, model, dtype, impl in (
        ("ref32", net, torch.float32, "reference"),
        ("fast32", net, torch.float32, "fast"),
        ("fast64", net64, torch.float64, "fast"),
    ):
        x = inputs.to(dtype).clone().requires_grad_()
        runs[name] = _run(model, x, model.initial_state(2), starts, impl)
    truth_out, truth_grads = runs["fast64"]
    for part, truth in ((0, truth_out), (1, truth_grads)):
        for key, t in truth.items():
            scale = t.abs().max().item()
            err_fast = (runs["fast32"][part][key].double() - t).abs().max().item()
            err_ref = (runs["ref32"][part][key].double() - t).abs().max().item()
            assert err_fast <= max(1e-5 * scale, 2 * err_ref), (key, err_fast, err_ref, scale)
            assert err_fast <= 1e-3 * scale, (key, err_fast, scale)


def test_no_grad_forward_equals_grad_forward():
    cfg = PlasticityConfig(rule="retroactive", fanout=True)
    net, inputs, state, starts = _problem(cfg)
    with torch.no_grad():
        h1, m1, f1 = fast_unroll.unroll(net, inputs, state, starts)
    h2, m2, f2 = fast_unroll.unroll(net, inputs, state, starts)
    assert torch.equal(h1, h2.detach()) and torch.equal(m1, m2.detach())
    assert torch.equal(f1.hebb, f2.hebb.detach()) and torch.equal(f1.elig, f2.elig.detach())
    assert not h1.requires_grad and h2.requires_grad


def test_chained_calls_equal_one_call():
    """Unrolling in two halves, carrying the final state, equals one unroll (values and grads)."""
    cfg = PlasticityConfig(rule="retroactive")
    net, inputs, state, _ = _problem(cfg, starts=False)
    h_all, m_all, f_all = fast_unroll.unroll(net, inputs, state)
    h_a, m_a, f_a = fast_unroll.unroll(net, inputs[:, :6], state)
    h_b, m_b, f_b = fast_unroll.unroll(net, inputs[:, 6:], f_a)
    torch.testing.assert_close(torch.cat([h_a, h_b], 1), h_all, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(f_b.hebb, f_all.hebb, rtol=1e-13, atol=1e-13)
    g_all = torch.autograd.grad(h_all.sum() + f_all.elig.sum(), net.synapses.alpha)[0]
    g_two = torch.autograd.grad(h_a.sum() + h_b.sum() + f_b.elig.sum(), net.synapses.alpha)[0]
    torch.testing.assert_close(g_two, g_all, rtol=1e-12, atol=1e-13)


def test_step_by_step_equals_unroll():
    cfg = PlasticityConfig(rule="simple", fanout=True)
    net, inputs, state, _ = _problem(cfg, starts=False, scale=0.5)
    with torch.no_grad():
        hidden, mods, final = fast_unroll.unroll(net, inputs, state)
        s = PlasticState(*(t.detach() for t in state))
        for t in range(inputs.shape[1]):
            s, m = net.step(inputs[:, t].detach(), s)
            torch.testing.assert_close(s.hidden, hidden[:, t], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(m.squeeze(1), mods[:, t], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s.hebb, final.hebb, rtol=1e-12, atol=1e-12)


def test_kernel_step_equals_reference_step():
    """``step(impl="fast")`` (acting through the kernel) follows the reference step for step."""
    cfg = PlasticityConfig(rule="retroactive", fanout=True, clip=0.6)
    net, inputs, state, _ = _problem(cfg, starts=False)
    with torch.no_grad():
        ref = fast = PlasticState(*(t.detach() for t in state))
        for t in range(inputs.shape[1]):
            ref, m_ref = net.step(inputs[:, t].detach(), ref, impl="reference")
            fast, m_fast = net.step(inputs[:, t].detach(), fast, impl="fast")
            assert m_fast.shape == m_ref.shape == (inputs.shape[0], 1)
            for a, b in zip(fast, ref):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(m_fast, m_ref, rtol=1e-12, atol=1e-12)
    assert ref.hebb.abs().max() == pytest.approx(0.6)  # the clip was reached on the way
    with pytest.raises(ValueError, match="impl must be one of"):
        net.step(inputs[:, 0], state, impl="cuda")


def test_dispatch(monkeypatch):
    cfg = PlasticityConfig(rule="hebbian")
    net, inputs, state, starts = _problem(cfg)
    calls = []
    real = fast_unroll.unroll
    monkeypatch.setattr(fast_unroll, "unroll", lambda *a, **k: calls.append(1) or real(*a, **k))
    h_auto, _, _ = net.unroll(inputs, state, starts)  # auto: fast on CPU float64
    assert calls == [1]
    h_ref, _, _ = net.unroll(inputs, state, starts, impl="reference")
    assert calls == [1]
    torch.testing.assert_close(h_auto, h_ref, rtol=1e-12, atol=1e-12)
    net.unroll(inputs, state, starts, impl="fast")
    assert calls == [1, 1]


def test_auto_takes_kernel_for_plain_rnn_too(monkeypatch):
    """Rule ``none``: acting and learning from the record are faster in the kernel, so auto takes
    it for every rule; the reference gives the same numbers."""
    net, inputs, state, starts = _problem(PlasticityConfig(rule="none"))
    calls = []
    real = fast_unroll.unroll
    monkeypatch.setattr(fast_unroll, "unroll", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert fast_unroll.supports(net, inputs)
    h_auto, m_auto, _ = net.unroll(inputs, state, starts)
    assert calls == [1] and m_auto is None
    h_ref, _, _ = net.unroll(inputs, state, starts, impl="reference")
    assert calls == [1]
    torch.testing.assert_close(h_auto, h_ref, rtol=1e-12, atol=1e-12)


def test_unsupported_dtype_falls_back_or_raises():
    cfg = PlasticityConfig(rule="simple")
    net = PlasticRNN(3, 4, cfg).to(torch.bfloat16)
    inputs = torch.randn(2, 5, 3, dtype=torch.bfloat16)
    state = net.initial_state(2)
    assert not fast_unroll.supports(net, inputs)
    with pytest.raises(ValueError, match="float32 or float64"):
        net.unroll(inputs, state, impl="fast")
    hidden, _, _ = net.unroll(inputs, state, impl="auto")  # the reference still runs
    ref, _, _ = net.reference_unroll(inputs, state)
    assert torch.equal(hidden, ref)


def test_unavailable_kernel_falls_back(monkeypatch):
    cfg = PlasticityConfig(rule="retroactive")
    net, inputs, state, starts = _problem(cfg)
    monkeypatch.setattr(fast_unroll._KERNEL, "_libs", None)
    monkeypatch.setattr(fast_unroll._KERNEL, "error", "no compiler (test)")
    assert not fast_unroll.supports(net, inputs)
    with pytest.raises(ValueError, match="no compiler"):
        net.unroll(inputs, state, starts, impl="fast")
    h, _, _ = net.unroll(inputs, state, starts)
    ref, _, _ = net.reference_unroll(inputs, state, starts)
    assert torch.equal(h, ref)


def test_bad_arguments():
    cfg = PlasticityConfig(rule="retroactive")
    net, inputs, state, _ = _problem(cfg)
    with pytest.raises(ValueError, match="episode_starts"):
        fast_unroll.unroll(net, inputs, state, torch.zeros(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="state.hidden"):
        fast_unroll.unroll(net, inputs, net.initial_state(2))
    with pytest.raises(ValueError, match="checkpoint_every"):
        fast_unroll.unroll(net, inputs, state, checkpoint_every=-1)


def test_short_training_same_curve_as_reference():
    """Three A2C updates with the fast replay and with the reference give the same numbers."""
    a2c = pytest.importorskip("bpm_agents.a2c")
    curves = {}
    for impl in ("fast", "reference"):
        cfg = a2c.A2CConfig(
            env_id="bpm/CueReward-v0",
            rule="retroactive",
            hidden_size=24,
            batch_size=4,
            seed=3,
            unroll_impl=impl,
            env_kwargs={"episode_length": 20},
            lr=1e-2,
        )
        trainer = a2c.A2CTrainer(cfg)
        curves[impl] = [trainer.update() for _ in range(3)]
        curves[impl + "-params"] = [p.detach().clone() for p in trainer.policy.parameters()]
    for fast, ref in zip(curves["fast"], curves["reference"]):
        for key in ("reward_mean", "loss", "grad_norm", "eta_e"):
            assert fast[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    for pf, pr in zip(curves["fast-params"], curves["reference-params"]):
        torch.testing.assert_close(pf, pr, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ acting and learning from it
def _policy_problem(cfg, B=4, T=13, N=7, D=5, A=3, dtype=torch.float64, seed=0, scale=1.0):
    """A policy with large random weights (traces hit the clip), fixed observations, uniforms."""
    from bpm_agents.policy import PlasticActorCritic, PolicyConfig

    g = torch.Generator().manual_seed(seed)
    policy = PlasticActorCritic(PolicyConfig(D, A, N, cfg)).to(dtype)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=dtype))
    obs = 2 * torch.randn(B, T, D, generator=g, dtype=dtype)
    uniforms = torch.rand(B, T, generator=g, dtype=torch.float64)
    return policy, obs, uniforms


def _act(policy, obs, uniforms, impl, checkpoint_every=None):
    B, T, _ = obs.shape
    if impl == "fast":
        actor = fast_unroll.Actor(
            policy.core,
            policy.policy_head.weight,
            policy.policy_head.bias,
            B,
            T,
            uniforms,
            checkpoint_every=checkpoint_every,
        )
    else:
        actor = policy.episode_actor(B, T, uniforms, impl="reference")
    actions = [actor.step(obs[:, t].numpy()) for t in range(T)]
    return actor, np.stack(actions, 1)


def _grads_of(policy, out_hidden, out_mods, leaves=()):
    weights = torch.linspace(-1, 1, out_hidden.shape[-1], dtype=out_hidden.dtype)
    loss = (
        policy.policy_head(out_hidden).pow(2).sum() + (out_hidden * weights).sum() + out_hidden.pow(2).sum()
    )
    if out_mods is not None:
        loss = loss + (out_mods * torch.arange(out_mods.shape[1], dtype=out_mods.dtype)).sum()
    params = [p for p in policy.parameters()]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("B", [4, 13])  # 13: blocks of 8 and 5 elements (4 + 4, 4 + 1)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_actor_acts_and_records_like_the_reference(cfg, B):
    """The fused actor samples the same actions as policy.step + sample_actions, records the same
    activities, and learning from its record gives the reference's gradients (every parameter)."""
    policy, obs, uniforms = _policy_problem(cfg, B=B)
    fast, a_fast = _act(policy, obs, uniforms, "fast", checkpoint_every=4)
    ref, a_ref = _act(policy, obs, uniforms, "reference")
    np.testing.assert_array_equal(a_fast, a_ref)
    assert len(set(a_fast.ravel().tolist())) > 1  # the draws do pick different actions
    hidden_ref, mods_ref, _ = policy.core.reference_unroll(obs, policy.initial_state(obs.shape[0]))
    torch.testing.assert_close(fast.x, hidden_ref, rtol=1e-12, atol=1e-12)
    if cfg.modulated:
        torch.testing.assert_close(fast.modulators, mods_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ref.modulators, mods_ref, rtol=1e-12, atol=1e-12)
    else:
        assert fast.modulators is None and ref.modulators is None
    hidden_rec, mods_rec = fast_unroll.unroll_recorded(policy.core, obs, fast.record())
    g_rec = _grads_of(policy, hidden_rec, mods_rec)
    g_ref = _grads_of(policy, hidden_ref, mods_ref)
    names = [n for n, _ in policy.named_parameters()]
    for name, a, b in zip(names, g_rec, g_ref):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("threads", [1, 2])
def test_actor_is_thread_count_invariant_and_float32_close(threads):
    """The persistent pool gives the same numbers at 1 and 2 threads (each element is computed by
    one thread), and float32 at paper-like sizes stays close to float64."""
    cfg = PlasticityConfig(rule="retroactive", fanout=True)
    torch.set_num_threads(threads)
    policy, obs, uniforms = _policy_problem(cfg, B=6, T=20, N=33, D=9, A=4, scale=0.3)
    fast, a64 = _act(policy, obs, uniforms, "fast")
    torch.set_num_threads(1)
    single, a1 = _act(policy, obs, uniforms, "fast")
    np.testing.assert_array_equal(a64, a1)
    assert torch.equal(fast.x, single.x)
    p32 = copy.deepcopy(policy).float()
    f32, _ = _act(p32, obs.float(), uniforms, "fast")
    torch.testing.assert_close(f32.x.double(), fast.x, rtol=1e-4, atol=1e-4)


def test_record_refused_after_a_parameter_change_and_a2c_replays():
    cfg = PlasticityConfig(rule="simple")
    policy, obs, uniforms = _policy_problem(cfg)
    fast, _ = _act(policy, obs, uniforms, "fast")
    record = fast.record()
    assert record.matches(policy.core)
    with torch.no_grad():
        policy.core.w.add_(0.1)
    assert not record.matches(policy.core)
    with pytest.raises(ValueError, match="parameters changed"):
        policy.unroll_recorded(obs, record)
    with pytest.raises(ValueError, match="built for 13 steps"):
        fast.step(obs[:, 0].numpy())


def test_sample_actions_by_inverse_cdf_by_hand():
    from bpm_agents.policy import sample_actions

    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]] * 5, dtype=torch.float64))
    u = torch.tensor([0.1, 0.19, 0.21, 0.69, 0.71], dtype=torch.float64)
    assert sample_actions(logits, u).tolist() == [0, 0, 1, 1, 2]
    assert sample_actions(logits[:1], torch.tensor([0.999999])).tolist() == [2]


def test_library_with_another_layout_is_refused():
    class FakeLib:
        def __init__(self, value):
            self.value = value

        def bpm_abi(self):
            return self.value

    good = fast_unroll.ABI_VERSION * 100000 + ctypes.sizeof(fast_unroll._Args) * 10 + 4
    assert fast_unroll._abi_check(FakeLib(good)) is None
    problem = fast_unroll._abi_check(FakeLib(good + 80))  # an Args 8 bytes larger
    assert problem is not None and "bytes" in problem
    assert fast_unroll._abi_check(FakeLib(good + 100000)) is not None  # another ABI version


@pytest.mark.parametrize(
    "cfg",
    [
        PlasticityConfig(rule="retroactive", clip=0.6, fanout=True),
        PlasticityConfig(rule="hebbian", clip=0.6),
        PlasticityConfig(rule="simple", clip=0.6, alpha="neuron"),
    ],
    ids=str,
)
def test_chunked_unroll_matches_reference_and_keeps_fewer_traces(cfg):
    """The memory-lean path for other devices: same outputs and gradients as the reference, and
    autograd keeps a few traces per segment instead of several per step."""
    net, inputs, state, starts = _problem(cfg, B=3, T=24, N=6)
    out_ref, grads_ref = _run(net, inputs, state, starts, "reference")
    out, grads = _run(net, inputs, state, starts, "chunked", checkpoint_every=6)
    for key in out_ref:
        torch.testing.assert_close(out[key], out_ref[key], rtol=0, atol=0, msg=key)
    for key in grads_ref:
        torch.testing.assert_close(grads[key], grads_ref[key], rtol=1e-12, atol=1e-12, msg=key)

    def saved_bytes(fn):
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(sizes)

    chunked = saved_bytes(lambda: net.chunked_unroll(inputs, state, starts, chunk=6))
    reference = saved_bytes(lambda: net.reference_unroll(inputs, state, starts))
    trace = 3 * 6 * 6 * 8  # one (B, N, N) float64 tensor
    # 4 segments, each keeping its start state (at most hebb + elig) and its inputs (< 1 KiB)
    assert chunked <= 4 * (2 * trace + 1024)
    assert reference >= 24 * 2 * trace  # the reference keeps several traces per step
    assert reference >= 5 * chunked


@pytest.mark.parametrize(
    "cfg",
    [
        PlasticityConfig(rule="hebbian", eta_shape="connection"),
        PlasticityConfig(rule="simple", fanout="connection"),
        PlasticityConfig(rule="retroactive", modulator_input="previous"),
    ],
    ids=str,
)
def test_options_the_kernel_lacks_fall_back_to_the_reference(cfg):
    """Acting and learning with options the RL kernel does not implement take the reference
    (auto) or are refused with the option named (fast)."""
    policy, obs, uniforms = _policy_problem(cfg)
    assert policy.core.synapses.kernel_static() is None
    reason = fast_unroll.unsupported_reason(policy.core, obs)
    assert (
        reason is not None
        and str(cfg.modulator_input if cfg.modulated and cfg.modulator_input != "new" else "") in reason
    )
    actor = policy.episode_actor(obs.shape[0], obs.shape[1], uniforms, impl="auto")
    assert actor.record() is None  # the reference actor
    with pytest.raises(ValueError, match="does not implement"):
        policy.episode_actor(obs.shape[0], obs.shape[1], uniforms, impl="fast")
    with pytest.raises(ValueError, match="does not implement"):
        policy.core.unroll(obs, policy.initial_state(obs.shape[0]), impl="fast")
    hidden, _, _ = policy.core.unroll(obs, policy.initial_state(obs.shape[0]))
    ref, _, _ = policy.core.reference_unroll(obs, policy.initial_state(obs.shape[0]))
    torch.testing.assert_close(hidden, ref, rtol=0, atol=0)


@pytest.mark.skipif(not fast_unroll.kernel_available(), reason="no C++ compiler for the kernel")
def test_float32_kernel_tanh_is_within_two_ulp_and_keeps_nan():
    """The kernel's float32 tanh is its own arithmetic (it vectorizes; std::tanh does not):
    within 2 ulp of the correctly rounded value on [-12, 12], exactly +-1 far out, NaN kept."""
    drives = torch.cat([torch.linspace(-12, 12, 20001), torch.tensor([0.0, 1e-30, -1e-8, 0.4, 30.0, -1e9])])
    N = drives.numel()
    net = PlasticRNN(1, N, PlasticityConfig(rule="none")).float()
    with torch.no_grad():
        net.w.zero_()
        net.input.weight.copy_(drives[:, None])  # u = 1: the drive of neuron j is drives[j] exactly
        net.input.bias.zero_()
    state = net.initial_state(1)
    with torch.no_grad():
        x, _, _ = fast_unroll.unroll(net, torch.ones(1, 1, 1), state)
    exact = torch.tanh(drives.double()).float()
    ulp = torch.nextafter(exact.abs(), torch.tensor(2.0)) - exact.abs()
    assert ((x[0, 0] - exact).abs() <= 2 * ulp).all()
    assert x[0, 0, -2].item() == 1.0 and x[0, 0, -1].item() == -1.0 and x[0, 0, N - 6].item() == 0.0
    with torch.no_grad():
        net.input.weight[0, 0] = float("nan")
        x, _, _ = fast_unroll.unroll(net, torch.ones(1, 1, 1), state)
    assert torch.isnan(x[0, 0, 0]) and not torch.isnan(x[0, 0, 1:]).any()
