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


def cmd_diagnose(args: argparse.Namespace) -> int:
    from spikect.diagnose import run_diagnose

    return run_diagnose(
        args.inputs,
        args.out,
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        output_types=args.output_type,
        debug=args.debug,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from spikect.demo import run_demo

    scores = run_demo(
        args.out,
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    found = f"{scores['lesions_found']} of {scores['lesions']} lesions found"
    lung = "n/a" if scores["lung_dice"] is None else f"{scores['lung_dice']:.3f}"
    inf = "n/a" if scores["infection_dice"] is None else f"{scores['infection_dice']:.3f}"
    print(f"phantom vs known masks: lung Dice {lung}, infection Dice {inf}, {found} -> {args.out}/check.json")
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

    d = sub.add_parser("diagnose", help="segment lungs and COVID-19 infection, classify and grade scans")
    d.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="DICOM folder/file, NIfTI file, or PNG/JPEG image or folder of them",
    )
    d.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="OUTDIR",
        help="output folder (one subfolder per input when several are given)",
    )
    d.add_argument("--weights", default="default", help="checkpoint .safetensors, or 'default'")
    d.add_argument("--device", default="cpu", help="cpu or cuda")
    d.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument(
        "--output-type",
        default="nifti,png",
        metavar="TYPES",
        help="comma-separated: nifti (masks), png (overlay), pdf, dicom-seg (default nifti,png)",
    )
    d.set_defaults(func=cmd_diagnose)

    m = sub.add_parser("demo", help="diagnose a synthetic chest CT phantom with known masks")
    m.add_argument(
        "-o", "--out", default="spikect-demo", metavar="DIR", help="output folder (default spikect-demo)"
    )
    m.add_argument("--weights", default="default", help="checkpoint .safetensors, or 'default'")
    m.add_argument("--device", default="cpu")
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=cmd_demo)

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
