"""Plastic LSTM cell, language model, batching and parameter matching."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from bpm_agents.lm.model import (
    VARIANTS,
    LanguageModel,
    LMConfig,
    LockedDropout,
    LSTMState,
    PlasticLSTMCell,
    config_parameters,
    count_parameters,
    match_hidden_size,
    matched_configs,
    plasticity_for,
    with_hidden,
)
from bpm_agents.lm.trainer import PRESETS, evaluate


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def hand_retroactive(xs, p, clip):
    """Scalar re-derivation of the retroactive plastic LSTM (fan-out) for D = 1, H = 2, B = 1."""
    H = 2
    h, c = [0.0] * H, [0.0] * H
    hebb = [[0.0] * H for _ in range(H)]
    elig = [[0.0] * H for _ in range(H)]
    hs = []
    for x in xs:
        pre = (
            x * p["wih"][0][k] + p["b"][k] + sum(h[i] * p["whh"][i][k] for i in range(H))
            for k in range(4 * H)
        )
        pre = list(pre)
        gi = [sig(pre[j]) for j in range(H)]
        gf = [sig(pre[H + j]) for j in range(H)]
        plastic = [sum(h[i] * p["alpha"][i][j] * hebb[i][j] for i in range(H)) for j in range(H)]
        g = [math.tanh(pre[2 * H + j] + plastic[j]) for j in range(H)]
        go = [sig(pre[3 * H + j]) for j in range(H)]
        c = [gf[j] * c[j] + gi[j] * g[j] for j in range(H)]
        h_new = [go[j] * math.tanh(c[j]) for j in range(H)]
        m = math.tanh(sum(p["wm"][k] * h_new[k] for k in range(H)) + p["bm"])
        rate = [p["v"][j] * m + p["u"][j] for j in range(H)]
        hebb = [
            [max(-clip, min(clip, hebb[i][j] + rate[j] * elig[i][j])) for j in range(H)] for i in range(H)
        ]
        elig = [
            [(1 - p["eta_e"]) * elig[i][j] + p["eta_e"] * h[i] * g[j] for j in range(H)] for i in range(H)
        ]
        h = h_new
        hs.append(h)
    return hs, hebb, elig


def test_cell_matches_hand_computation_retroactive_fanout() -> None:
    gen = torch.Generator().manual_seed(3)
    p = {
        "wih": (torch.rand(1, 8, generator=gen) * 2 - 1).tolist(),
        "b": (torch.rand(8, generator=gen) * 0.4 - 0.2).tolist(),
        "whh": (torch.rand(2, 8, generator=gen) * 2 - 1).tolist(),
        "alpha": [[0.9, -0.7], [0.5, 1.2]],
        "wm": [1.3, -0.8], "bm": 0.2, "v": [1.5, -2.0], "u": [0.3, 0.1], "eta_e": 0.6,
    }  # fmt: skip
    clip = 0.02  # small, so the clamp is exercised
    cell = PlasticLSTMCell(1, 2, plasticity_for("retroactive", clip=clip))
    with torch.no_grad():
        cell.weight_ih.copy_(torch.tensor(p["wih"]))
        cell.bias.copy_(torch.tensor(p["b"]))
        cell.weight_hh.copy_(torch.tensor(p["whh"]))
        syn = cell.synapses
        syn.alpha.copy_(torch.tensor(p["alpha"]))
        syn.modulator.weight.copy_(torch.tensor([p["wm"]]))
        syn.modulator.bias.fill_(p["bm"])
        syn.fanout_weight.copy_(torch.tensor(p["v"]))
        syn.fanout_bias.copy_(torch.tensor(p["u"]))
        syn.eta_e.fill_(p["eta_e"])
    xs = [1.0, -0.5, 2.0, 0.7]
    out, state = cell(torch.tensor(xs).view(1, 4, 1), cell.initial_state(1))
    hs, hebb, elig = hand_retroactive(xs, p, clip)
    torch.testing.assert_close(out[0], torch.tensor(hs), rtol=0, atol=1e-6)
    torch.testing.assert_close(state.hebb[0], torch.tensor(hebb), rtol=0, atol=1e-6)
    torch.testing.assert_close(state.elig[0], torch.tensor(elig), rtol=0, atol=1e-6)
    assert state.hebb.abs().max().item() == pytest.approx(clip)  # the clip was reached
    assert state.hebb.abs().min().item() > 0  # and the trace did move


def test_lstm_variant_equals_torch_lstm_cell() -> None:
    """Rule ``none``: the same arithmetic as torch.nn.LSTMCell (gate order i, f, g, o)."""
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(3, 4)
    cell = PlasticLSTMCell(3, 4, plasticity_for("lstm"))
    with torch.no_grad():
        cell.weight_ih.copy_(ref.weight_ih.T)
        cell.weight_hh.copy_(ref.weight_hh.T)
        cell.bias.copy_(ref.bias_ih + ref.bias_hh)
    x = torch.randn(2, 5, 3)
    out, state = cell(x, cell.initial_state(2))
    h = c = torch.zeros(2, 4)
    for t in range(5):
        h, c = ref(x[:, t], (h, c))
        torch.testing.assert_close(out[:, t], h)
    torch.testing.assert_close(state.cell, c)
    assert state.hebb.shape == (2, 0, 0)


def _plastic_cell(variant: str, impl: str = "reference", seed: int = 0) -> PlasticLSTMCell:
    cell = PlasticLSTMCell(3, 4, plasticity_for(variant), impl)
    with torch.no_grad():  # weights large enough that the plastic path and M matter
        for k, prm in enumerate(cell.parameters()):
            prm.copy_(
                torch.empty_like(prm).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(seed + k))
            )
    return cell


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_lstm_cell_follows_the_rnn_step_unroll_contract(variant: str, impl: str) -> None:
    """step(x, state) -> (state, M); unroll(inputs, state, starts) -> (hidden, M (B, T), state),
    as PlasticRNN; M equals the reference step's, resets equal fresh starts."""
    from bpm_agents.networks import PlasticRNN

    cell = _plastic_cell(variant, impl)
    x = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(3))
    state0 = cell.initial_state(2)
    hidden, mods, final = cell.unroll(x, state0)
    assert hidden.shape == (2, 6, 4)
    ref_state, ref_m = state0, []
    for t in range(6):
        stepped, m = cell.step(x[:, t], ref_state)  # the contract's step, from the reference state
        parts = cell.reference_step(cell.input_drive(x[:, t : t + 1])[:, 0], ref_state)
        for a, b in zip(stepped, parts.state):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert (m is None) == (parts.modulation is None)
        if m is not None:
            torch.testing.assert_close(m, parts.modulation, rtol=1e-5, atol=1e-6)
        ref_state = parts.state
        torch.testing.assert_close(hidden[:, t], ref_state.hidden, rtol=1e-5, atol=1e-6)
        ref_m.append(parts.modulation)
    if ref_m[0] is None:
        assert mods is None
    else:
        torch.testing.assert_close(mods, torch.cat(ref_m, dim=1), rtol=1e-5, atol=1e-6)
    for a, b in zip(final, ref_state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a stream that starts anew at step 3 equals a fresh unroll of its last 3 steps
    starts = torch.zeros(2, 6, dtype=torch.bool)
    starts[1, 3] = True
    h2, m2, _ = cell.unroll(x, state0, starts)
    fresh, fresh_m, _ = cell.unroll(x[1:, 3:], cell.initial_state(1))
    torch.testing.assert_close(h2[1, 3:], fresh[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2[0], hidden[0], rtol=1e-5, atol=1e-6)
    if fresh_m is not None:
        torch.testing.assert_close(m2[1, 3:], fresh_m[0], rtol=1e-5, atol=1e-6)
    # the same calls on the RL core give the same shapes
    rnn = PlasticRNN(3, 4, plasticity_for(variant))
    r_hidden, r_mods, r_final = rnn.unroll(x, rnn.initial_state(2), starts, impl="reference")
    assert r_hidden.shape == hidden.shape and (r_mods is None) == (mods is None)
    assert (r_mods is None or r_mods.shape == mods.shape) and type(r_final).__name__ == "PlasticState"
    r_state, r_m = rnn.step(x[:, 0], rnn.initial_state(2))
    c_state, c_m = cell.step(x[:, 0], cell.initial_state(2))
    assert r_state.hidden.shape == c_state.hidden.shape and (r_m is None) == (c_m is None)


def small_config(variant: str, **kw) -> LMConfig:
    return LMConfig(variant=variant, vocab_size=11, emb_size=6, hidden_sizes=(5, 4), weight_init=0.5,
                    alpha_init=0.5, **kw)  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_size_one_equals_same_sequence_inside_a_batch(variant: str) -> None:
    model = LanguageModel(small_config(variant), torch.Generator().manual_seed(1))
    with torch.no_grad():  # make the plastic path matter
        for layer in model.layers:
            if hasattr(layer.synapses, "fanout_bias"):
                layer.synapses.fanout_bias.fill_(0.3)
    tokens = torch.randint(0, 11, (3, 9), generator=torch.Generator().manual_seed(2))
    logits, state = model(tokens, model.initial_state(3))
    for b in range(3):
        one, one_state = model(tokens[b : b + 1], model.initial_state(1))
        torch.testing.assert_close(one[0], logits[b], rtol=0, atol=1e-6)
        for s_one, s_all in zip(one_state, state):
            for a, full in zip(s_one, s_all):
                torch.testing.assert_close(a[0], full[b], rtol=0, atol=1e-6)
    if variant != "lstm":
        assert state[0].hebb.abs().sum() > 0


@pytest.mark.parametrize("variant", ["hebbian", "simple", "retroactive"])
def test_plastic_path_changes_output_and_gets_gradients(variant: str) -> None:
    cfg = small_config(variant)
    model = LanguageModel(cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        for layer in model.layers:
            if hasattr(layer.synapses, "fanout_bias"):
                layer.synapses.fanout_bias.fill_(0.3)
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(2))
    logits, _ = model(tokens, model.initial_state(2))
    logits.logsumexp(-1).sum().backward()
    syn = model.layers[0].synapses
    grads = {"alpha": syn.alpha.grad}
    if variant == "hebbian":
        grads["eta"] = syn.eta.grad
    else:
        grads |= {"modulator": syn.modulator.weight.grad, "fanout_weight": syn.fanout_weight.grad}
    if variant == "retroactive":
        grads["eta_e"] = syn.eta_e.grad
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, name
    with torch.no_grad():  # alpha = 0 removes the plastic path: outputs change
        for layer in model.layers:
            layer.synapses.alpha.zero_()
        plain, _ = model(tokens, model.initial_state(2))
    assert (plain - logits).abs().max() > 1e-6


def test_uniform_model_perplexity_is_vocab_size() -> None:
    cfg = small_config("retroactive")
    model = LanguageModel(cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    ids = torch.randint(0, 11, (200,), generator=torch.Generator().manual_seed(0))
    loss, ppl = evaluate(model, ids, batch_size=3, bptt=7)
    assert loss == pytest.approx(math.log(11), rel=1e-6)
    assert ppl == pytest.approx(11.0, rel=1e-5)


def test_evaluation_carries_state_across_segments_and_resets_per_pass() -> None:
    model = LanguageModel(
        replace(small_config("retroactive"), weight_init=1.0), torch.Generator().manual_seed(4)
    )
    ids = torch.randint(0, 11, (121,), generator=torch.Generator().manual_seed(5))
    short = evaluate(model, ids, batch_size=2, bptt=6)
    # One segment over the whole stream: carrying the state across segments gives the same loss.
    whole = evaluate(model, ids, batch_size=2, bptt=1000)
    assert short[0] == pytest.approx(whole[0], rel=1e-6)
    # A second pass starts again from zero state: same number.
    assert evaluate(model, ids, batch_size=2, bptt=6)[0] == pytest.approx(short[0], rel=1e-6)
    # Dropping the state at each segment start gives a different loss (so carrying matters).
    streams = ids[: 60 * 2].view(2, 60)
    total = 0.0
    with torch.no_grad():
        for start in range(0, 59, 6):
            x, y = streams[:, start : start + 6], streams[:, start + 1 : start + 7]
            x = x[:, : y.shape[1]]
            logits, _ = model(x, model.initial_state(2))
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, 11), y.reshape(-1), reduction="sum"
            ).item()
    assert abs(total / 118 - short[0]) > 1e-5  # several times the tolerance above


def test_state_detach_cuts_graph_but_keeps_values() -> None:
    model = LanguageModel(small_config("simple"), torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 11, (2, 4), generator=torch.Generator().manual_seed(0))
    _, state = model(tokens, model.initial_state(2))
    assert state[0].hebb.requires_grad
    detached = [s.detach() for s in state]
    assert isinstance(detached[0], LSTMState)
    assert not any(t.requires_grad for s in detached for t in s)
    torch.testing.assert_close(detached[1].hebb, state[1].hebb)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_of_config_matches_built_model(variant: str) -> None:
    for cfg in (small_config(variant), small_config(variant, alpha="neuron")):
        assert config_parameters(cfg) == count_parameters(
            LanguageModel(cfg, torch.Generator().manual_seed(0))
        )
    tied = LMConfig(variant=variant, vocab_size=50, emb_size=7, hidden_sizes=(9, 7), tied=True)
    model = LanguageModel(tied, torch.Generator().manual_seed(0))
    assert model.decoder.weight is model.embedding.weight
    assert config_parameters(tied) == count_parameters(model)


def test_hand_counted_baseline_parameters() -> None:
    # emb V*E + per layer (D*4H + 4H + H*4H) + decoder H*V + V
    cfg = LMConfig(variant="lstm", vocab_size=10_000, emb_size=200, hidden_sizes=(200, 200))
    layer = 200 * 800 + 800 + 200 * 800
    assert config_parameters(cfg) == 10_000 * 200 + 2 * layer + 200 * 10_000 + 10_000 == 4_651_600
    # retroactive adds per layer: alpha H*H, modulator H + 1, fan-out 2H, eta_e 1
    retro = replace(cfg, variant="retroactive", hidden_sizes=(195, 195))
    h = 195
    layer_r = lambda d: d * 4 * h + 4 * h + h * 4 * h + h * h + h + 1 + 2 * h + 1  # noqa: E731
    assert config_parameters(retro) == 10_000 * 200 + layer_r(200) + layer_r(195) + 195 * 10_000 + 10_000


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_matching_lands_just_below_target(variant: str) -> None:
    base = LMConfig(variant="lstm", vocab_size=10_000, emb_size=200, hidden_sizes=(200, 200))
    target = config_parameters(base)
    cfg, count = match_hidden_size(replace(base, variant=variant), target)
    assert count == config_parameters(cfg) <= target
    assert count >= 0.995 * target
    h = cfg.hidden_sizes[0]
    assert config_parameters(with_hidden(cfg, h + 1)) > target  # the largest that fits
    if variant == "lstm":
        assert cfg.hidden_sizes == (200, 200)
    else:
        assert h < 200


def test_matching_keeps_tied_last_layer_and_rejects_tiny_targets() -> None:
    base = LMConfig(variant="lstm", vocab_size=1000, emb_size=40, hidden_sizes=(115, 115, 40), tied=True,
                    alpha="neuron")  # fmt: skip
    matched = matched_configs(base)
    target = config_parameters(base)
    for variant, (cfg, count) in matched.items():
        assert cfg.hidden_sizes[-1] == 40 and cfg.hidden_sizes[0] == cfg.hidden_sizes[1]
        assert (
            count
            == config_parameters(cfg)
            <= target
            < config_parameters(with_hidden(cfg, cfg.hidden_sizes[0] + 1))
        )
    with pytest.raises(ValueError, match="below the smallest"):
        match_hidden_size(replace(base, variant="retroactive"), 10)


def test_project_parameters_keeps_eta_e_in_unit_interval() -> None:
    model = LanguageModel(small_config("retroactive"), torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.layers[0].synapses.eta_e.fill_(3.0)
        model.layers[1].synapses.eta_e.fill_(-0.2)
    model.project_parameters()
    assert model.layers[0].synapses.eta_e.item() == 1.0
    assert model.layers[1].synapses.eta_e.item() == 0.0


def test_config_validation_names_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown variant 'gru'"):
        LMConfig(variant="gru")
    with pytest.raises(ValueError, match="tied weights need"):
        LMConfig(emb_size=10, hidden_sizes=(20, 20), tied=True)
    with pytest.raises(ValueError, match="alpha must be one of"):
        LMConfig(variant="simple", alpha="synapse")
    with pytest.raises(ValueError, match="unknown LMConfig fields"):
        LMConfig.from_dict({"variant": "lstm", "colour": 1})
    cfg = small_config("simple", tied=False)
    assert LMConfig.from_dict(cfg.to_dict()) == cfg


def test_locked_dropout_shares_its_mask_over_time_and_follows_the_seed() -> None:
    drop = LockedDropout(0.25)
    x = torch.ones(4, 7, 200)
    drop.generator = torch.Generator().manual_seed(3)
    y = drop(x)
    # one mask per (sequence, feature), constant along time, scaled so the mean is kept
    assert torch.equal(y, y[:, :1, :].expand_as(y))
    torch.testing.assert_close(y.unique(), torch.tensor([0.0, 1 / 0.75]))
    dropped = (y[:, 0, :] == 0).float().mean().item()
    assert 0.18 < dropped < 0.32  # 800 Bernoulli(0.25) draws: 0.25 +- 2.6 sigma
    drop.generator = torch.Generator().manual_seed(3)
    assert torch.equal(drop(x), y)
    drop.eval()
    assert torch.equal(drop(x), x)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=f"dropout must be in \\[0, 1\\), got {bad}"):
            LockedDropout(bad)


def test_model_dropout_is_active_in_training_only_and_seeded() -> None:
    cfg = replace(small_config("retroactive"), dropout_input=0.3, dropout_hidden=0.3, dropout_output=0.3)
    model = LanguageModel(cfg, torch.Generator().manual_seed(0))
    tokens = torch.randint(0, cfg.vocab_size, (3, 6), generator=torch.Generator().manual_seed(1))

    def run(seed: int) -> torch.Tensor:
        model.set_dropout_generator(torch.Generator().manual_seed(seed))
        return model(tokens, model.initial_state(3))[0]

    model.train()
    assert torch.equal(run(5), run(5))
    assert not torch.allclose(run(5), run(6))
    model.eval()
    assert torch.equal(run(5), run(6))
    no_dropout = LanguageModel(replace(cfg, dropout_input=0.0, dropout_hidden=0.0, dropout_output=0.0),
                               torch.Generator().manual_seed(0)).eval()  # fmt: skip
    torch.testing.assert_close(run(5), no_dropout(tokens, no_dropout.initial_state(3))[0])


def test_large_preset_is_tied_per_neuron_alpha_and_matches_its_budget() -> None:
    base = replace(PRESETS["large"][0], vocab_size=10_000)
    assert base.tied and base.alpha == "neuron" and base.hidden_sizes == (1150, 1150, 400)
    # tied: the decoder adds only its bias, so the count is emb V*E + layers + V
    layer = lambda d, h: d * 4 * h + 4 * h + h * 4 * h  # noqa: E731
    lstm_count = 10_000 * 400 + layer(400, 1150) + layer(1150, 1150) + layer(1150, 400) + 10_000
    assert config_parameters(base) == lstm_count
    for variant, (cfg, count) in matched_configs(base).items():
        assert cfg.hidden_sizes[-1] == 400 and cfg.hidden_sizes[0] == cfg.hidden_sizes[1]
        assert 0.995 * lstm_count <= count <= lstm_count, variant
