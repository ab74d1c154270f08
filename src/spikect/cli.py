"""``spikect`` command line: one thin command per verb over functions a script can call too."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from spikect import __version__


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


def _known_errors() -> tuple[type[BaseException], ...]:
    from spikect.checkpoint import CheckpointError
    from spikect.config import ConfigError

    errors: list[type[BaseException]] = [
        UsageError,
        ConfigError,
        CheckpointError,
        FileNotFoundError,
        ValueError,
    ]
    try:
        from spikect.io import InputError

        errors.append(InputError)
    except ImportError:  # io is optional for training-only use
        pass
    return tuple(errors)


def cmd_train(args: argparse.Namespace) -> int:
    from spikect.config import load_config
    from spikect.train import train

    if args.resume is None and args.config is None:
        raise UsageError("give --config FILE (or --resume CKPT to continue a run)")
    cfg = load_config(args.config) if args.config else None
    if args.resume is not None and not Path(args.resume).is_file():
        raise UsageError(f"--resume: checkpoint not found: {args.resume}")
    out = (
        Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "resumed")
    )
    if args.resume is not None:
        from spikect.checkpoint import load_checkpoint

        cfg = load_checkpoint(args.resume).config
    best = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    print(f"best checkpoint: {best}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from spikect.evaluate import evaluate, format_table

    if args.weights is None:
        raise UsageError("give --weights PATH (or --weights default once a default model is shipped)")
    result = evaluate(
        args.root,
        args.weights,
        batch_size=args.batch_size,
        device=args.device,
        part=args.part,
        progress=not args.no_progress,
    )
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from spikect.bench import run_bench
    from spikect.config import load_config

    run_bench(load_config(args.config), args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spikect", description="Brain-inspired lung CT diagnosis with a hybrid spiking network."
    )
    p.add_argument("--version", action="version", version=f"spikect {__version__}")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("--config", help="YAML config (see configs/)")
    t.add_argument("--out", help="output folder (default runs/<config name>)")
    t.add_argument("--resume", help="continue from a last.safetensors checkpoint")
    t.add_argument(
        "--no-progress", action="store_true", help="print one line per epoch instead of progress bars"
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="score a model on a folder in the seg or classification layout")
    e.add_argument("root", help="folder with slices.csv (segmentation) or images.csv (classification)")
    e.add_argument("--weights", help="checkpoint .safetensors, or 'default'")
    e.add_argument("--json", help="write the metrics to this JSON file")
    e.add_argument(
        "--part",
        choices=["train", "val", "test"],
        help="score only this part of the checkpoint's own split (e.g. its held-out test patients)",
    )
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--device", default="cpu")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="speed, memory and FLOP figures of a config on this machine")
    b.add_argument(
        "--config", default=str(default_config_path()), help="YAML config (default: the shipped default)"
    )
    b.add_argument("--json", help="write the figures to this JSON file")
    b.set_defaults(func=cmd_bench)
    return p


def default_config_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("spikect") / "configs" / "default.yaml"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if args.debug:
        return func(args)
    try:
        return func(args)
    except _known_errors() as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"spikect {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spikect {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
