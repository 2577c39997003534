"""Command lines for language modelling: ``train.py lm ...`` and ``evaluate.py lm ...``.

Also runnable as ``python -m bpm_agents.lm.cli train ...`` / ``... evaluate ...``. Bad input
(missing folder or split, out-of-vocabulary token, unknown variant, bad checkpoint) prints one
clear line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from bpm_agents.devices import resolve_device
from bpm_agents.lm.corpus import Corpus
from bpm_agents.lm.model import VARIANTS, config_parameters, match_hidden_size
from bpm_agents.lm.trainer import (
    L2_SCOPES,
    PRESETS,
    NonFiniteLossError,
    evaluate,
    load_checkpoint,
    model_from_checkpoint,
    run_training,
)
from bpm_agents.ops.plastic_lstm import IMPLS
from bpm_agents.plasticity import ETA_SHAPES, FANOUT_INITS, FANOUTS, MODULATOR_INPUTS

EXIT_USAGE = 2


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py lm",
        description="Train a (plastic) LSTM language model on a PTB-style corpus.",
    )
    p.add_argument("--variant", choices=VARIANTS, default="lstm", help="model variant (default: lstm)")
    p.add_argument(
        "--data", required=True, help="folder with ptb.{train,valid,test}.txt or {train,valid,test}.txt"
    )
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default="small", help="architecture + optimisation preset"
    )
    p.add_argument("--epochs", type=int, help="number of epochs (preset: small 13)")
    p.add_argument(
        "--max-steps", type=int,
        help="cap on optimizer steps over the run (quick runs); an epoch cut short counts as done for --resume",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder (default: runs/lm-<variant>-<preset>-s<seed>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <out>/last.pt with its saved settings: only --epochs, --max-steps, --device, --threads, --impl and --no-progress apply, and a setting flag whose value differs from the saved one is refused (exit 2) (also from inside an epoch that Ctrl-C or SIGTERM interrupted: both stop after the current step, save last.pt and exit 130)",
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
    p.add_argument(
        "--impl", choices=IMPLS, default="auto",
        help="plastic layers: the C++ segment kernel where available (auto), always (fast), or the plain autograd reference",
    )  # fmt: skip
    g = p.add_argument_group("overrides of the preset")
    g.add_argument("--lr", type=float)
    g.add_argument("--lr-decay", type=float, help="per-epoch lr factor from --decay-start on")
    g.add_argument("--decay-start", type=int, help="first epoch with a decayed lr")
    g.add_argument("--init-scale", type=float, help="weights start U(-s, s)")
    g.add_argument("--l2", type=float, help="L2 penalty (SGD weight decay)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--bptt", type=int)
    g.add_argument("--clip", type=float, help="gradient-norm clip")
    g.add_argument("--hebb-clip", type=float, help="plastic traces are clamped to [-c, c]")
    g.add_argument("--alpha", choices=("connection", "neuron"), help="alpha per connection or per neuron")
    g.add_argument("--alpha-init", type=float, help="alpha starts alpha_init * U(0, 1) (small: 0.01)")
    g.add_argument(
        "--alpha-grad-scale",
        help="multiply alpha's gradient by this: a float > 0 or 1/N (1 / hidden size, the authors' choice)",
    )  # fmt: skip
    g.add_argument(
        "--eta-shape", choices=ETA_SHAPES, help="hebbian: one eta per layer (scalar) or per connection"
    )
    g.add_argument(
        "--fanout",
        choices=FANOUTS,
        help="modulated variants: rate M, v_j M + u_j (neuron) or V_ij M + U_ij (connection)",
    )
    g.add_argument(
        "--fanout-init",
        choices=FANOUT_INITS,
        help="fan-out v=1, u=0 (ones) or U(-1, 1) like Linear(1, N) (default)",
    )
    g.add_argument(
        "--modulator-input", choices=MODULATOR_INPUTS, help="M reads h_t (new) or h_{t-1} (previous)"
    )
    g.add_argument(
        "--plastic-w-init", type=float, help="plastic variants: W_hg starts U(-s, s) (default: --init-scale)"
    )
    g.add_argument("--l2-on", choices=L2_SCOPES, help="parameters that get the L2 penalty (default: all)")
    g.add_argument(
        "--target-params", type=int,
        help="parameter budget for hidden-size matching (default: the lstm baseline's count)",
    )  # fmt: skip
    g.add_argument("--no-match", action="store_true", help="keep the preset hidden sizes (no matching)")
    p.add_argument("--valid-every", type=int, help="also validate every N optimizer steps inside an epoch")
    p.add_argument(
        "--stats-steps", type=int,
        help="steps of the validation streams the plasticity statistics in log.csv are measured on (default 200; 0: none)",
    )  # fmt: skip
    p.add_argument("--eval-test-each-epoch", action="store_true", help="also log test perplexity every epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py lm", description="Perplexity of a saved language model.")
    p.add_argument("checkpoint", help="a .pt checkpoint, or a run folder (its best.pt)")
    p.add_argument("--data", required=True, help="corpus folder")
    p.add_argument("--split", choices=("valid", "test", "train"), default="test")
    p.add_argument("--batch-size", type=int, default=10, help="parallel streams (1: one stream)")
    p.add_argument("--bptt", type=int, default=20, help="segment length (state carried across)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument(
        "--impl", choices=IMPLS, default="auto", help="plastic step implementation, as for training"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage / help
        return int(exc.code or 0)


def _set_threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise ValueError(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(n)


#: train.py lm options (dest) that are saved settings of a run: option -> config field
_SAVED_SETTINGS = {
    "variant": "variant",
    "lr": "lr",
    "lr_decay": "lr_decay",
    "decay_start": "decay_start",
    "batch_size": "batch_size",
    "eval_batch_size": "eval_batch_size",
    "bptt": "bptt",
    "clip": "clip",
    "l2": "l2",
    "seed": "seed",
    "valid_every": "valid_every",
    "init_scale": "init_scale",
    "hebb_clip": "hebb_clip",
    "alpha": "alpha",
}


def _resume_flags(args: argparse.Namespace, argv: list[str]) -> dict[str, tuple[str, object]]:
    """Saved settings given explicitly on a resume's command line: field -> (flag, value)."""
    quiet = copy.deepcopy(_train_parser())
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    given = vars(quiet.parse_known_args(argv)[0])
    return {
        field: ("--" + dest.replace("_", "-"), getattr(args, dest))
        for dest, field in _SAVED_SETTINGS.items()
        if dest in given
    }


def train_main(argv: list[str]) -> int:
    """``train.py lm``: returns the exit code."""
    args = _parse(_train_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        _set_threads(args.threads)
        device = resolve_device(args.device)
        model_cfg, train_cfg = PRESETS[args.preset]
        overrides = {
            "lr": args.lr, "lr_decay": args.lr_decay, "decay_start": args.decay_start,
            "epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
            "eval_batch_size": args.eval_batch_size, "bptt": args.bptt, "clip": args.clip,
            "l2": args.l2, "seed": args.seed, "valid_every": args.valid_every, "l2_on": args.l2_on,
            "stats_steps": args.stats_steps,
        }  # fmt: skip
        train_cfg = replace(train_cfg, **{k: v for k, v in overrides.items() if v is not None})
        if args.eval_test_each_epoch:
            train_cfg = replace(train_cfg, eval_test_each_epoch=True)
        model_over = {
            "init_scale": args.init_scale, "hebb_clip": args.hebb_clip, "alpha": args.alpha,
            "alpha_init": args.alpha_init, "alpha_grad_scale": args.alpha_grad_scale,
            "eta_shape": args.eta_shape, "fanout": args.fanout, "fanout_init": args.fanout_init,
            "modulator_input": args.modulator_input, "plastic_w_init": args.plastic_w_init,
        }  # fmt: skip
        model_cfg = replace(model_cfg, **{k: v for k, v in model_over.items() if v is not None})
        out = Path(args.out or f"runs/lm-{args.variant}-{args.preset}-s{args.seed}")
        if args.resume and not (out / "last.pt").exists():
            raise ValueError(f"--resume: no checkpoint {out / 'last.pt'}")

        corpus = Corpus(args.data)
        model_cfg = replace(model_cfg, vocab_size=len(corpus.vocab))
        print(
            f"corpus {args.data}: vocab {len(corpus.vocab):,}, tokens train {corpus.train.numel():,} "
            f"valid {corpus.valid.numel():,} test {corpus.test.numel():,}",
            file=sys.stderr,
        )
        baseline = replace(model_cfg, variant="lstm")
        target = args.target_params if args.target_params is not None else config_parameters(baseline)
        chosen = replace(model_cfg, variant=args.variant)
        if args.no_match:
            count = config_parameters(chosen)
        else:
            chosen, count = match_hidden_size(chosen, target)
        print(
            f"parameters: target {target:,} (lstm at {list(baseline.hidden_sizes)}); {args.variant} "
            f"hidden {list(chosen.hidden_sizes)} -> {count:,} ({100 * (count - target) / target:+.3f}%)",
            file=sys.stderr,
        )
        from bpm_agents.lm.model import PlasticLSTMCell
        from bpm_agents.ops.plastic_lstm import path_of

        probe = PlasticLSTMCell(chosen.emb_size, chosen.hidden_sizes[0], chosen.plasticity(), args.impl)
        path = path_of(probe) if torch.device(device).type == "cpu" else "reference (not on CPU)"
        if args.impl == "fast" and probe.plasticity.plastic and path != "fast":
            # refuse before a run folder is written
            raise ValueError(
                f"--impl fast cannot run this model: {path.removeprefix('reference ')}; use --impl auto or reference"
            )
        print(f"plastic step: {path}", file=sys.stderr)
        summary = run_training(
            out, corpus, chosen, train_cfg, device, resume=args.resume,
            progress_bar=not args.no_progress, extra_config={"argv": ["train.py", "lm", *argv], "plastic_step": path},
            impl=args.impl, resume_flags=_resume_flags(args, argv) if args.resume else None,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        last = out / "last.pt"
        kept = (
            f"the last good checkpoint {last} is kept"
            if last.exists()
            else "no checkpoint had been saved yet"
        )
        print(f"stopped: {exc}; {kept}. Try a smaller --lr or --clip.", file=sys.stderr)
        return EXIT_USAGE
    if summary.get("interrupted"):
        print(
            f"interrupted, checkpoint saved: step {summary['steps']}, run folder {out} (--resume continues)"
        )
        return 130
    if "test_ppl" in summary:
        print(f"test perplexity {summary['test_ppl']:.2f} (best valid {summary['best_valid_ppl']:.2f})")
    return 0


def evaluate_main(argv: list[str]) -> int:
    """``evaluate.py lm``: returns the exit code."""
    args = _parse(_evaluate_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        _set_threads(args.threads)
        device = resolve_device(args.device)
        path = Path(args.checkpoint)
        if path.is_dir():
            path = path / "best.pt"
        model, vocab = model_from_checkpoint(load_checkpoint(path, device), device)
        model.set_impl(args.impl)
        corpus = Corpus(args.data, splits=(args.split,), vocab=vocab)
        loss, ppl = evaluate(model, corpus.split(args.split), args.batch_size, args.bptt)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = {
        "checkpoint": str(path), "variant": model.config.variant, "split": args.split,
        "tokens": corpus.split(args.split).numel(), "batch_size": args.batch_size,
        "loss": loss, "perplexity": ppl,
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['variant']} {args.split} perplexity {ppl:.2f} (loss {loss:.4f} nats/token, {result['tokens']:,} tokens)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bpm_agents.lm.cli {train,evaluate} ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "evaluate": evaluate_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m bpm_agents.lm.cli {train,evaluate} [ARGS...]", file=sys.stderr)
        return EXIT_USAGE
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
