"""Command lines for language modelling: ``bpm train-lm ...`` and ``bpm evaluate LM_RUN ...``
(also ``train.py lm ...`` / ``evaluate.py lm ...``, and ``python -m bpm_agents.lm.cli train ...``
/ ``... evaluate ...``). The model and training flags are generated from :class:`LMConfig` and
:class:`TrainConfig` (:mod:`bpm_agents.config`). Bad input
(missing folder or split, out-of-vocabulary token, unknown variant, bad checkpoint) prints one
clear line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bpm_agents.config import Flags, add_run_flags, set_threads
from bpm_agents.devices import resolve_device
from bpm_agents.lm.corpus import Corpus
from bpm_agents.lm.model import RENAMED_FIELDS, LMConfig, config_parameters, match_hidden_size
from bpm_agents.lm.trainer import (
    PRESETS,
    NonFiniteLossError,
    TrainConfig,
    checkpoint_path,
    evaluate,
    load_checkpoint,
    model_from_checkpoint,
    run_training,
)
from bpm_agents.ops.plastic_lstm import IMPLS

EXIT_USAGE = 2


def _preset_defaults(index: int) -> dict[str, Any]:
    """``--help``'s defaults of the LM flags: preset name -> its model (0) or training (1) config."""
    return {name: configs[index] for name, configs in PRESETS.items()}


def _train_parser(prog: str = "train.py lm") -> tuple[argparse.ArgumentParser, Flags]:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train a (plastic) LSTM language model on a PTB-style corpus. The model and "
        "training flags override the --preset's values.",
    )
    p.add_argument(
        "--data", required=True, help="folder with ptb.{train,valid,test}.txt or {train,valid,test}.txt"
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="small",
        help="architecture + optimisation preset (default: small)",
    )
    add_run_flags(
        p,
        out="run folder (default: runs/lm-<variant>-<preset>-s<seed>)",
        out_required=False,
        updates=None,
        resume="continue from <out>/checkpoint.pt with its saved settings: only --epochs, --max-steps, --device, --threads, --impl and --no-progress apply, and a setting flag whose value differs from the saved one is refused (exit 2) (also from inside an epoch that Ctrl-C or SIGTERM interrupted: both stop after the current step, save checkpoint.pt and exit 130)",
        checkpoint_every=None,
        tensorboard=None,
    )
    p.add_argument(
        "--impl",
        choices=IMPLS,
        default="auto",
        help="implementation of the recurrent step of the plastic layers: the C++ segment kernel where available (auto), always (fast), or the plain autograd reference (default: auto)",
    )
    flags = Flags()
    g = p.add_argument_group("model (default: the preset's)")
    flags.add(g, LMConfig, defaults=_preset_defaults(0))
    g.add_argument(
        "--target-params",
        type=int,
        metavar="N",
        help="parameter budget for hidden-size matching (default: the lstm baseline's count)",
    )
    g.add_argument(
        "--match",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="match the hidden sizes to the parameter budget (--no-match: keep the preset's or --hidden-sizes) (default: on)",
    )
    t = p.add_argument_group("training (default: the preset's)")
    flags.add(t, TrainConfig, defaults=_preset_defaults(1))
    return p, flags


def _evaluate_parser(prog: str = "evaluate.py lm") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Perplexity of a saved language model.")
    p.add_argument("checkpoint", help="a .pt checkpoint, or a run folder (its best.pt)")
    p.add_argument("--data", required=True, help="corpus folder")
    p.add_argument("--split", choices=("valid", "test", "train"), default="test", help="(default: test)")
    p.add_argument(
        "--batch-size", type=int, default=10, help="parallel streams (1: one stream) (default: 10)"
    )
    p.add_argument("--bptt", type=int, default=20, help="segment length (state carried across) (default: 20)")
    add_run_flags(p, out=None, updates=None, checkpoint_every=None, progress=False, tensorboard=None)
    p.add_argument(
        "--impl",
        choices=IMPLS,
        default="auto",
        help="implementation of the recurrent step, as for training (default: auto)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage / help
        return int(exc.code or 0)


#: TrainConfig fields that a resume takes from the command line (the others are the saved ones)
_RESUME_APPLIES = ("epochs", "max_steps")


def _resume_flags(flags: Flags, given: dict[str, Any]) -> dict[str, tuple[str, object]]:
    """Saved settings given explicitly on a resume's command line: field -> (flag, value); a
    renamed field also under its old name, which a checkpoint of an older version holds."""
    out: dict[str, tuple[str, object]] = {}
    old_names = {new: old for old, new in RENAMED_FIELDS.items()}
    for name, value in given.items():
        if name not in _RESUME_APPLIES:
            out[name] = (flags.flag_of(name), value)
            if name in old_names:
                out[old_names[name]] = out[name]
    return out


def train_main(argv: list[str], prog: str = "train.py lm") -> int:
    """``bpm train-lm`` (``train.py lm``): returns the exit code."""
    parser, flags = _train_parser(prog)
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    try:
        set_threads(args.threads)
        device = resolve_device(args.device)
        given = flags.given(args)
        model_cfg, train_cfg = PRESETS[args.preset]
        train_cfg = replace(train_cfg, **Flags.kwargs(TrainConfig, given))
        model_cfg = replace(model_cfg, **Flags.kwargs(LMConfig, given))
        out = Path(args.out or f"runs/lm-{model_cfg.variant}-{args.preset}-s{train_cfg.seed}")
        if args.resume and not checkpoint_path(out).exists():
            raise ValueError(f"--resume: no checkpoint {checkpoint_path(out)}")

        corpus = Corpus(args.data)
        assert corpus.train is not None and corpus.valid is not None and corpus.test is not None  # all loaded
        model_cfg = replace(model_cfg, vocab_size=len(corpus.vocab))
        print(
            f"corpus {args.data}: vocab {len(corpus.vocab):,}, tokens train {corpus.train.numel():,} "
            f"valid {corpus.valid.numel():,} test {corpus.test.numel():,}",
            file=sys.stderr,
        )
        baseline = replace(model_cfg, variant="lstm")
        target = args.target_params if args.target_params is not None else config_parameters(baseline)
        chosen = model_cfg
        if not args.match:
            count = config_parameters(chosen)
        else:
            chosen, count = match_hidden_size(chosen, target)
        print(
            f"parameters: target {target:,} (lstm at {list(baseline.hidden_sizes)}); {chosen.variant} "
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
            progress_bar=args.progress, extra_config={"argv": [*prog.split(), *argv], "plastic_step": path},
            impl=args.impl, resume_flags=_resume_flags(flags, given) if args.resume else None,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        last = checkpoint_path(out)
        kept = (
            f"the last good checkpoint {last} is kept"
            if last.exists()
            else "no checkpoint had been saved yet"
        )
        print(f"{prog}: stopped: {exc}; {kept}. Try a smaller --lr or --grad-clip.", file=sys.stderr)
        return EXIT_USAGE
    if summary.get("interrupted"):
        print(
            f"interrupted, checkpoint saved: step {summary['steps']}, run folder {out} (--resume continues)"
        )
        return 130
    if "test_ppl" in summary:
        print(f"test perplexity {summary['test_ppl']:.2f} (best valid {summary['best_valid_ppl']:.2f})")
    return 0


def evaluate_main(argv: list[str], prog: str = "evaluate.py lm") -> int:
    """``bpm evaluate LM_RUN`` (``evaluate.py lm``): returns the exit code."""
    args = _parse(_evaluate_parser(prog), argv)
    if isinstance(args, int):
        return args
    try:
        set_threads(args.threads)
        device = resolve_device(args.device)
        path = Path(args.checkpoint)
        if path.is_dir():
            path = path / "best.pt"
        model, vocab = model_from_checkpoint(load_checkpoint(path, device), device)
        model.set_impl(args.impl)
        corpus = Corpus(args.data, splits=(args.split,), vocab=vocab)
        loss, ppl = evaluate(model, corpus.split(args.split), args.batch_size, args.bptt)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
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
