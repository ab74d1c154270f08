"""``spikect`` command line: one thin command per verb over functions a script can call too."""

from __future__ import annotations

import argparse
import dataclasses
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
    from spikect.distributed import is_main_process
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
    if is_main_process():  # under torchrun, rank 0 speaks for the job
        print(f"best checkpoint: {best}")
    return 0


def _print_and_save(table: str, result: dict, json_path: str | None) -> int:
    """Print a command's table; write its figures to ``json_path`` when given."""
    print(table)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from spikect.evaluate import evaluate, format_table

    result = evaluate(
        args.root,
        args.weights,
        batch_size=args.batch_size,
        device=args.device,
        part=args.part,
        progress=not args.no_progress,
        vflip=args.vflip,
        gamma=args.gamma,
    )
    return _print_and_save(format_table(result), result, args.json)


def cmd_bench(args: argparse.Namespace) -> int:
    from spikect.bench import bench_command

    bench_command(args)
    return 0


def cmd_energy(args: argparse.Namespace) -> int:
    from spikect.energy import format_table, run_energy

    if args.data is None:
        raise UsageError("give --data ROOT (a folder in the seg or classification layout)")
    result = run_energy(
        args.weights,
        args.data,
        e_ac_pj=args.e_ac_pj,
        e_mac_pj=args.e_mac_pj,
        max_images=args.max_images,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    return _print_and_save(format_table(result), result, args.json)


def cmd_compare(args: argparse.Namespace) -> int:
    from spikect.compare import run_compare

    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    run_compare(args.config, out, progress=not args.no_progress)
    print(f"report: {out / 'report.md'}")
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
        cls_crop=args.cls_crop,
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


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from spikect.app import create_app, from_env
        from spikect.app.settings import MB, is_loopback, local_host_names
    except ImportError as exc:
        raise UsageError(f"spikect serve needs the app extra: pip install 'spikect[app]' ({exc})") from None

    settings = from_env(
        home=args.home,
        weights=args.weights,
        token=args.token,
        max_upload_bytes=args.max_upload_mb * MB,
        max_extract_bytes=4 * args.max_upload_mb * MB,  # what a zip may inflate to
        queue_size=args.queue_size,
        device=args.device,
        batch_size=args.batch_size,
    )
    local = is_loopback(args.host)
    if not local and settings.token is None:
        raise UsageError(
            f"refusing to listen on {args.host} without a token: anyone who can reach this machine could "
            "read and upload scans; add --token SECRET (or set SPIKECT_TOKEN), or keep --host 127.0.0.1"
        )
    if args.max_upload_mb < 1 or args.queue_size < 1:
        raise UsageError("--max-upload-mb and --queue-size must be at least 1")
    if local:
        settings = dataclasses.replace(settings, allowed_hosts=local_host_names(args.port))
    app = create_app(settings)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    shown = f"[{shown}]" if ":" in shown else shown
    print(f"spikect serve: data in {settings.home}; model {settings.weights}")
    print(f"spikect serve: open http://{shown}:{args.port}/  (API docs at /docs)")
    if settings.token is not None:
        print("spikect serve: every API call needs 'Authorization: Bearer <token>'; the page asks for it")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
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
    e.add_argument("--weights", default="default", help="checkpoint .safetensors, or 'default' (shipped)")
    e.add_argument("--json", help="write the metrics to this JSON file")
    e.add_argument(
        "--part",
        choices=["train", "val", "test"],
        help="score only this part of the checkpoint's own split (e.g. its held-out test patients)",
    )
    e.add_argument("--vflip", action="store_true", help="robustness: flip slices and masks upside down")
    e.add_argument("--gamma", type=float, default=1.0, help="robustness: change contrast, intensity ** GAMMA")
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
    d.add_argument(
        "--cls-crop",
        action="store_true",
        help="classify each slice's lung crop (the classifier's training domain) instead of the full field",
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

    v = sub.add_parser("serve", help="the diagnosis app in the browser (and its REST API)")
    v.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    v.add_argument("--port", type=int, default=8000)
    v.add_argument(
        "--token",
        help="required on every API call (Authorization: Bearer); needed for a non-local --host; "
        "or set SPIKECT_TOKEN, which other users cannot see in ps",
    )
    v.add_argument(
        "--home", help="data folder: database, uploads, results (default $SPIKECT_HOME or ~/.spikect)"
    )
    v.add_argument(
        "--weights", help="checkpoint .safetensors, or 'default' (default $SPIKECT_WEIGHTS or 'default')"
    )
    v.add_argument("--max-upload-mb", type=int, default=1024, help="largest upload in MB (default 1024)")
    v.add_argument(
        "--queue-size", type=int, default=8, help="studies that may wait for the worker (default 8)"
    )
    v.add_argument("--device", default="cpu", help="cpu or cuda")
    v.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    v.add_argument("--quiet", action="store_true", help="log warnings only, not every request")
    v.set_defaults(func=cmd_serve)

    b = sub.add_parser("bench", help="speed, memory and FLOP figures of a config on this machine")
    b.add_argument("--config", help="YAML config (default: the shipped default; with --quick: tiny.yaml)")
    b.add_argument("--json", help="write the figures to this JSON file")
    b.add_argument("--quick", action="store_true", help="tiny config, 8-slice 64² volume: seconds, for CI")
    b.add_argument("--threads", type=int, help="torch threads (default: the config's, else torch's)")
    b.add_argument("--weights", help="checkpoint to measure (without --config: under its own config)")
    b.add_argument("--full-epoch", action="store_true", help="time a real epoch, not extrapolated batches")
    b.add_argument("--epoch-steps", type=int, default=8, help="batches timed for the epoch estimate")
    b.add_argument("--ct-slices", type=int, help="slices of the generated volume (default 300; 0: skip)")
    b.add_argument("--ct-size", type=int, help="its in-plane size (default 512)")
    b.add_argument("--batch-size", type=int, default=8, help="diagnose batch size")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=cmd_bench)

    g = sub.add_parser("energy", help="energy per image: hybrid SNN vs the same net as an ANN")
    g.add_argument("--weights", default="default", help="checkpoint .safetensors, or 'default'")
    g.add_argument("--data", metavar="ROOT", help="folder of slices (seg or classification layout)")
    g.add_argument("--e-ac-pj", type=float, default=0.9, help="energy per accumulate, pJ (fp32 add)")
    g.add_argument("--e-mac-pj", type=float, default=4.6, help="energy per multiply-accumulate, pJ (fp32)")
    g.add_argument("--max-images", type=int, default=64, help="evenly spaced slices of ROOT to average")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--json", help="write the figures to this JSON file")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=cmd_energy)

    c = sub.add_parser("compare", help="the hybrid SNN against ANN and single-task baselines, as a report")
    c.add_argument("--config", required=True, help="compare file (see configs/compare.yaml)")
    c.add_argument("--out", metavar="DIR", help="output folder (default runs/<config name>); reruns resume")
    c.add_argument("--no-progress", action="store_true", help="one line per epoch instead of progress bars")
    c.set_defaults(func=cmd_compare)
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


def run() -> None:
    """The console script: :func:`main`, then exit (a torchrun worker without the interpreter's teardown)."""
    from spikect.distributed import exit_process

    exit_process(main())


if __name__ == "__main__":
    run()
