"""The plasticity options of the LM (issue 15): the cell against hand computations and the
reference, fast vs reference where the kernel runs them, old configs, L2 scopes and the presets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bpm_agents.lm.cli import train_main
from bpm_agents.lm.model import (
    VARIANTS,
    LanguageModel,
    LMConfig,
    LSTMState,
    PlasticLSTMCell,
    config_parameters,
    match_hidden_size,
    plasticity_for,
)
from bpm_agents.lm.trainer import PRESETS, TrainConfig, parameter_groups
from bpm_agents.ops import plastic_lstm as fast_step

D, H = 4, 5
needs_kernel = pytest.mark.skipif(
    not fast_step.kernel_available(), reason="the C++ LSTM kernel cannot be built here"
)


def make_cell(variant: str, **options) -> PlasticLSTMCell:
    """A float64 cell with every parameter U(-1, 1), so the plastic path and the clip matter."""
    cfg = plasticity_for(variant, clip=options.pop("clip", 0.3), **options)
    cell = PlasticLSTMCell(D, H, cfg).double()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1)
        if hasattr(cell.synapses, "eta_e"):
            cell.synapses.eta_e.fill_(0.4)
    return cell


def run(cell: PlasticLSTMCell, impl: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs, final traces and every gradient of a loss on them, from a state with live traces."""
    cell.impl = impl
    cell.zero_grad(set_to_none=True)
    with torch.no_grad():
        _, state = cell(x[:, :3], cell.initial_state(x.shape[0]))
    out, final = cell(x[:, 3:], state.detach())
    loss = (out * torch.linspace(-1, 1, H, dtype=x.dtype)).sum() + final.hebb.sin().sum()
    loss.backward()
    res = {"out": out.detach(), "hebb": final.hebb.detach()}
    res.update({f"grad {n}": p.grad for n, p in cell.named_parameters()})
    return res


X = torch.rand(2, 9, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1


def test_lstm_modulator_previous_reads_h_prev_and_new_reads_h():
    cell = make_cell("simple", modulator_input="previous")
    state = cell.initial_state(2, dtype=torch.float64)
    state = LSTMState(torch.full((2, H), 0.3, dtype=torch.float64), state.cell, state.hebb, state.elig)
    drive = cell.input_drive(X[:, :1])[:, 0]
    parts = cell.reference_step(drive, state)
    w, b = cell.synapses.modulator.weight[0], cell.synapses.modulator.bias
    torch.testing.assert_close(parts.modulation[:, 0], torch.tanh(state.hidden @ w + b))
    cell_new = make_cell("simple")  # same seed: same parameters, M reads h_t
    parts_new = cell_new.reference_step(drive, state)
    torch.testing.assert_close(parts_new.state.hidden, parts.state.hidden)
    torch.testing.assert_close(parts_new.modulation[:, 0], torch.tanh(parts_new.state.hidden @ w + b))


def test_lstm_per_connection_fanout_and_eta_update_by_hand():
    for variant, opts in (("simple", dict(fanout="connection")), ("hebbian", dict(eta_shape="connection"))):
        cell = make_cell(variant, clip=10.0, **opts)
        syn = cell.synapses
        state = cell.initial_state(2, dtype=torch.float64)
        state = LSTMState(
            torch.full((2, H), 0.5, dtype=torch.float64), state.cell, state.hebb + 0.1, state.elig
        )
        parts = cell.reference_step(cell.input_drive(X[:, :1])[:, 0], state)
        h = parts.state.hidden
        # g_t recomputed by hand: tanh(drive_g + h_{t-1} (W_hg + alpha * Hebb))
        drive = cell.input_drive(X[:, :1])[:, 0]
        g = torch.tanh(drive[:, 2 * H : 3 * H] + state.hidden @ cell.weight_hh[:, 2 * H : 3 * H]
                       + torch.einsum("bi,bij->bj", state.hidden, syn.alpha * state.hebb))  # fmt: skip
        product = state.hidden[:, :, None] * g[:, None, :]
        if variant == "simple":
            m = torch.tanh(h @ syn.modulator.weight[0] + syn.modulator.bias)
            rate = m[:, None, None] * syn.fanout_weight + syn.fanout_bias  # (B, H, H): V_ij M + U_ij
        else:
            rate = syn.eta  # (H, H)
        assert rate.shape[-2:] == (H, H)
        torch.testing.assert_close(parts.state.hebb, state.hebb + rate * product)


@needs_kernel
@pytest.mark.parametrize(
    "variant, opts",
    [
        ("hebbian", dict(alpha="neuron", alpha_grad_scale="1/N", alpha_init=1e-4)),
        ("simple", dict(alpha="neuron", alpha_grad_scale="1/N", fanout_init="default")),
        ("retroactive", dict(alpha_grad_scale=0.5, fanout_init="default")),
        ("simple", dict(fanout="none")),
    ],
)
def test_fast_matches_reference_for_the_options_it_supports(variant, opts):
    cell = make_cell(variant, **opts)
    assert fast_step.path_of(cell) == "fast"
    fast, ref = run(cell, "fast", X), run(cell, "reference", X)
    assert fast.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-10, atol=1e-12, msg=k)


@needs_kernel
def test_alpha_grad_scale_is_exact_on_the_fast_path():
    plain, scaled = (
        make_cell("simple", alpha="neuron"),
        make_cell("simple", alpha="neuron", alpha_grad_scale="1/N"),
    )
    a, b = run(plain, "fast", X), run(scaled, "fast", X)
    torch.testing.assert_close(b["grad synapses.alpha"], a["grad synapses.alpha"] / H, rtol=1e-12, atol=0)
    torch.testing.assert_close(b["grad weight_hh"], a["grad weight_hh"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "variant, opts, named",
    [
        ("hebbian", dict(eta_shape="connection"), "eta_shape='connection'"),
        ("simple", dict(fanout="connection"), "fanout='connection'"),
        ("retroactive", dict(modulator_input="previous"), "modulator_input='previous'"),
    ],
)
def test_options_outside_the_kernel_fall_back_on_auto_and_are_refused_on_fast(variant, opts, named):
    cell = make_cell(variant, **opts)
    assert fast_step.option_reason(cell.plasticity) is not None
    auto, ref = run(cell, "auto", X), run(cell, "reference", X)
    for k in ref:
        torch.testing.assert_close(auto[k], ref[k], rtol=0, atol=0, msg=k)
    cell.impl = "fast"
    assert named in fast_step.path_of(cell)
    with pytest.raises(ValueError, match=f"impl='fast' cannot run here: {named}"):
        cell(X, cell.initial_state(2, dtype=torch.float64))


def test_old_lm_config_loads_with_the_old_behaviour():
    old = {"variant": "retroactive", "vocab_size": 11, "emb_size": 6, "hidden_sizes": [5, 4], "tied": False,
           "alpha": "connection", "hebb_clip": 1.0, "eta_init": 0.1, "eta_e_init": 0.1, "alpha_init": 0.01,
           "init_scale": 0.1, "dropout_input": 0.0, "dropout_hidden": 0.0, "dropout_output": 0.0}  # fmt: skip
    cfg = LMConfig.from_dict(old)
    p = cfg.plasticity()
    assert (p.fanout, p.fanout_init, p.modulator_input, p.eta_shape, p.alpha_grad_scale) == (
        "neuron",
        "ones",
        "new",
        "scalar",
        1.0,
    )
    model = LanguageModel(cfg, torch.Generator().manual_seed(0))
    syn = model.layers[0].synapses
    assert torch.all(syn.fanout_weight == 1) and torch.all(syn.fanout_bias == 0)
    # the options at their defaults draw nothing extra: the same seed gives the same weights as a
    # config that never names them
    bare = LanguageModel(
        LMConfig.from_dict({**old, "hidden_sizes": (5, 4)}), torch.Generator().manual_seed(0)
    )
    for (n, a), (_, b) in zip(model.state_dict().items(), bare.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert LMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    new = replace(cfg, fanout="connection", alpha_grad_scale="1/N", modulator_input="previous")
    assert LMConfig.from_dict(json.loads(json.dumps(new.to_dict()))) == new


def test_plastic_w_init_sets_only_the_plastic_block():
    cfg = LMConfig(variant="simple", vocab_size=11, emb_size=6, hidden_sizes=(5, 4), plastic_w_init=0.01)
    layer = LanguageModel(cfg, torch.Generator().manual_seed(0)).layers[0]
    w = layer.weight_hh
    assert w[:, 10:15].abs().max() <= 0.01 and w[:, :10].abs().max() > 0.05
    base = LanguageModel(replace(cfg, variant="lstm"), torch.Generator().manual_seed(0)).layers[0]
    assert base.weight_hh[:, 10:15].abs().max() > 0.05  # the baseline keeps weight_init
    with pytest.raises(ValueError, match="plastic_w_init must be > 0"):
        replace(cfg, plastic_w_init=0.0)


def test_l2_scopes_by_hand():
    cfg = LMConfig(variant="retroactive", vocab_size=11, emb_size=6, hidden_sizes=(5, 4))
    model = LanguageModel(cfg, torch.Generator().manual_seed(0))
    names = {id(p): n for n, p in model.named_parameters()}
    for scope in ("all", "non-plastic", "none"):
        tc = TrainConfig(l2=0.1, l2_on=scope)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.SGD(parameter_groups(model, tc), lr=0.5)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()  # zero gradient: only the decay moves a parameter, p <- p (1 - lr l2)
        for n, p in model.named_parameters():
            decayed = scope == "all" or (scope == "non-plastic" and ".synapses." not in n)
            torch.testing.assert_close(p.detach(), before[n] * (0.95 if decayed else 1.0), msg=f"{scope} {n}")
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(before[n])
    groups = parameter_groups(model, TrainConfig(l2_on="non-plastic"))
    plastic = {names[id(p)] for p in groups[1]["params"]}
    assert "layers.0.synapses.alpha" in plastic and "layers.1.synapses.modulator.weight" in plastic
    assert not any(".synapses." in names[id(p)] for p in groups[0]["params"])
    with pytest.raises(ValueError, match="l2_on must be one of all, non-plastic, none, got 'plastic'"):
        TrainConfig(l2_on="plastic")


@pytest.mark.parametrize("preset", ["small-paper", "small-authors"])
def test_new_presets_are_parameter_matched_within_half_a_percent(preset):
    base = replace(PRESETS[preset][0], vocab_size=10_000)
    target = config_parameters(replace(base, variant="lstm"))
    assert target == config_parameters(replace(PRESETS["small"][0], vocab_size=10_000, variant="lstm"))
    for variant in VARIANTS:
        cfg, count = match_hidden_size(replace(base, variant=variant), target)
        assert target * 0.995 <= count <= target, (variant, count, target)
        assert config_parameters(with_one_more(cfg)) > target  # the largest that fits


def with_one_more(cfg: LMConfig) -> LMConfig:
    return replace(cfg, hidden_sizes=tuple(h + 1 for h in cfg.hidden_sizes))


def test_presets_hold_the_paper_and_authors_choices():
    paper = PRESETS["small-paper"][0]
    hp, sp = replace(paper, variant="hebbian").plasticity(), replace(paper, variant="simple").plasticity()
    assert (hp.eta_shape, hp.clip) == ("connection", 1.0)
    assert (sp.fanout, sp.modulator_input, sp.clip) == ("connection", "previous", 1.0)
    authors = replace(PRESETS["small-authors"][0], variant="retroactive", vocab_size=11)
    model = LanguageModel(authors, torch.Generator().manual_seed(0))
    syn = model.layers[0].synapses
    assert syn.alpha.shape == (200,) and 0 <= syn.alpha.min() and syn.alpha.max() <= 1e-4
    assert syn.alpha_grad_scale == pytest.approx(1 / 200)
    assert (
        syn.fanout_weight.shape == (200,) and (syn.fanout_weight < 0).any() and (syn.fanout_weight > 0).any()
    )
    assert syn.config.clip == 2.0 and syn.config.modulator_input == "new"


@pytest.fixture()
def corpus_dir(tmp_path: Path) -> Path:
    words = ["a", "b", "c", "d", "e", "f"]
    line = lambda k: " ".join(words[(k * 7 + j * 3) % 6] for j in range(6))  # noqa: E731
    for split, n in (("train", 30), ("valid", 6), ("test", 6)):
        (tmp_path / f"{split}.txt").write_text("\n".join(line(k) for k in range(n)) + "\n")
    return tmp_path


TINY = ["--batch-size", "2", "--bptt", "4", "--eval-batch-size", "2", "--no-progress", "--threads", "1",
        "--device", "cpu", "--target-params", "4000", "--max-steps", "2"]  # fmt: skip


def test_cli_flags_reach_the_run_config(corpus_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    args = ["--variant", "simple", "--data", str(corpus_dir), "--out", str(out), *TINY, "--fanout", "connection",
            "--fanout-init", "default", "--modulator-input", "previous", "--alpha", "neuron",
            "--alpha-init", "0.001", "--alpha-grad-scale", "1/N", "--plastic-w-init", "0.02",
            "--l2-on", "non-plastic", "--stats-steps", "5"]  # fmt: skip
    assert train_main(args) == 0
    err = capsys.readouterr().err
    assert "plastic step: reference (fanout='connection'" in err
    config = json.loads((out / "config.json").read_text())
    assert (config["kind"], config["algo"]) == ("lm", "lm-truncated-bptt")
    m, tr = config["config"]["model"], config["config"]["train"]
    assert (m["fanout"], m["fanout_init"], m["modulator_input"], m["alpha"], m["alpha_init"]) == (
        "connection",
        "default",
        "previous",
        "neuron",
        0.001,
    )
    assert (m["alpha_grad_scale"], m["plastic_w_init"], tr["l2_on"], tr["stats_steps"]) == (
        "1/N",
        0.02,
        "non-plastic",
        5,
    )
    assert config["plastic_step"].startswith("reference")
    assert train_main(["--variant", "hebbian", "--data", str(corpus_dir), "--out", str(tmp_path / "h"), *TINY,
                       "--eta-shape", "connection"]) == 0  # fmt: skip
    assert (
        json.loads((tmp_path / "h" / "config.json").read_text())["config"]["model"]["eta_shape"]
        == "connection"
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--preset", "small-paper", "--impl", "fast"],
            "--impl fast cannot run this model: (fanout='connection'",
        ),
        (["--alpha-grad-scale", "half"], "alpha_grad_scale must be a float > 0 or '1/N', got 'half'"),
        (["--alpha-grad-scale", "-1"], "alpha_grad_scale must be a float > 0 or '1/N', got -1.0"),
        (["--fanout", "edge"], "invalid choice: 'edge'"),
    ],
)
def test_cli_bad_options_exit_2_naming_the_value(corpus_dir: Path, tmp_path: Path, capsys, extra, message):
    out = tmp_path / "bad"
    code = train_main(["--variant", "simple", "--data", str(corpus_dir), "--out", str(out), *TINY, *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (out / "config.json").exists()
