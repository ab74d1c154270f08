"""The lever measurements of docs/performance.md, one subcommand each (variants timed in turn in one process).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/perf_levers.py ladder [--threads 1] [--rounds 5]
    ... batch | stream CT.nii.gz | bf16 | sparsity | diagnose CT.nii.gz

Needs the shipped weights and, for the real slices, ../shared/data (covid19-ct-seg-png).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spikect.bench import time_interleaved
from spikect.checkpoint import load_model
from spikect.model import fastlif
from spikect.model.inference import as_input, optimize_for_inference, reuse_freed_memory
from spikect.preprocess import display_to_unit, prepare_batch

SLICES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "covid19-ct-seg-png" / "ct"


def real_slices(n: int = 16) -> torch.Tensor:
    files = sorted(SLICES.glob("*.png"))[::80][:n]
    return prepare_batch(
        np.stack([display_to_unit(np.asarray(Image.open(f).convert("L"))) for f in files]), 128
    )


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def training_kernel(xp: torch.Tensor, v0: torch.Tensor, tau: float, decay_input: bool, node: object):  # noqa: ANN201
    """The inference path before: the training kernel (keeps h), a static input copied T times."""
    t = xp.shape[0]
    s, _, v = fastlif._ext.lif_forward(
        xp.reshape(t, -1).contiguous(),
        v0.reshape(-1).contiguous(),
        tau,
        decay_input,
        float(node.v_threshold),
        float(node.v_reset),  # type: ignore[attr-defined]
    )
    return s.reshape(xp.shape), v.reshape(xp.shape[1:])


def report(times: dict[str, list[float]], per: int, base: str) -> None:
    ref = statistics.median(times[base])
    for k, v in times.items():
        print(
            f"  {k:32s} {statistics.median(v) * 1000 / per:7.1f} ms/slice  x{ref / statistics.median(v):.2f}"
        )


def ladder(args: argparse.Namespace) -> None:
    model, _ = load_model("default")
    x = real_slices()
    forward_only = fastlif._infer
    steps = {
        "before": (model, training_kernel),
        "+ forward-only LIF kernel": (model, forward_only),
        "+ channels_last": (optimize_for_inference(model, fold_bn=False), forward_only),
        "+ BatchNorm folded": (optimize_for_inference(model), forward_only),
    }

    def call(name: str, xx: torch.Tensor) -> dict[str, torch.Tensor]:
        net, kernel = steps[name]
        fastlif._infer = kernel
        with torch.inference_mode():
            return net(as_input(net, xx))

    outs = {
        k: {h: torch.cat([call(k, x[i : i + 8])[h] for i in (0, 8)]) for h in ("cls", "lung", "infection")}
        for k in steps
    }
    ref = outs["before"]
    for k, o in outs.items():
        print(
            f"  {k:32s} cls maxdiff {(o['cls'] - ref['cls']).abs().max():.4f}  "
            f"lung Dice {dice(o['lung'] > 0, ref['lung'] > 0):.4f}  "
            f"infection Dice {dice(o['infection'] > 0, ref['infection'] > 0):.4f}"
        )
    fns: dict[str, Callable[[], object]] = {k: (lambda k=k: call(k, x[:8])) for k in steps}
    print("glibc default heap:")
    report(time_interleaved(fns, args.rounds), 8, "before")
    reuse_freed_memory()
    print("heap reuse on:")
    report(time_interleaved(fns, args.rounds), 8, "before")


def batch(args: argparse.Namespace) -> None:
    model, _ = load_model("default")
    net = optimize_for_inference(model)
    reuse_freed_memory()
    xs = {b: as_input(net, torch.rand(b, 1, 128, 128)) for b in (4, 8, 16, 32)}

    def run(b: int) -> None:
        for _ in range(32 // b):
            net(xs[b])

    with torch.inference_mode():
        report(time_interleaved({f"batch {b}": (lambda b=b: run(b)) for b in xs}, args.rounds), 32, "batch 8")


def stream(args: argparse.Namespace) -> None:
    from spikect.diagnose import inference_net, model_input
    from spikect.io import load_volume
    from spikect.preprocess import resize_logits

    model, _ = load_model("default")
    net = inference_net(model)
    reuse_freed_memory()
    vol = load_volume(args.ct)
    n, size = min(96, vol.array.shape[0]), vol.array.shape[1:]

    def prep(a: int) -> torch.Tensor:
        return as_input(net, prepare_batch(model_input(vol, a, min(a + 8, n)), 128))

    def post(out: dict[str, torch.Tensor]) -> np.ndarray:
        return (resize_logits(torch.cat([out["lung"], out["infection"]], dim=1), size) > 0).numpy()

    def plain() -> None:
        for a in range(0, n, 8):
            post(net(prep(a)))

    def prefetch() -> None:
        with ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(prep, 0)
            for a in range(0, n, 8):
                x = nxt.result()
                if a + 8 < n:
                    nxt = pool.submit(prep, a + 8)
                post(net(x))

    with torch.inference_mode():
        report(time_interleaved({"plain": plain, "prefetch": prefetch}, args.rounds), n, "plain")


def bf16(args: argparse.Namespace) -> None:
    class Bf16(torch.nn.Module):
        def __init__(self, op: torch.nn.Module) -> None:
            super().__init__()
            self.op = op.to(torch.bfloat16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.op(x.to(torch.bfloat16)).float()

    model, _ = load_model("default")
    x = real_slices()
    net = optimize_for_inference(model)
    for layer in net.hybrid_layers().values():
        if isinstance(layer.op, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            layer.op = Bf16(layer.op)
    with torch.inference_mode():
        ref, out = model(x), net(as_input(net, x))
    print(
        f"  bf16 convs: cls maxdiff {(out['cls'] - ref['cls']).abs().max():.3f}  "
        f"lung Dice {dice(out['lung'] > 0, ref['lung'] > 0):.4f}  "
        f"infection Dice {dice(out['infection'] > 0, ref['infection'] > 0):.4f}"
    )


def sparsity(args: argparse.Namespace) -> None:
    model, _ = load_model("default")
    rates: list[tuple[int, float]] = []
    for m in model.modules():
        if isinstance(m, fastlif.FusedLIFNode):
            m.register_forward_hook(lambda _m, _i, o: rates.append((o.numel(), float(o.float().mean()))))
    with torch.inference_mode():
        model(real_slices())
    n, r = np.array([a for a, _ in rates]), np.array([b for _, b in rates])
    weighted = (n * r).sum() / n.sum()
    print(f"  {len(r)} LIF layers: median rate {np.median(r):.3f}, element-weighted {weighted:.3f}")


def diagnose_ab(args: argparse.Namespace) -> None:
    from spikect.diagnose import StageTimer, diagnose
    from spikect.io import load_volume

    model, ckpt = load_model("default")
    vol = load_volume(args.ct)
    results = {}

    def run(fast: bool) -> None:
        timer = StageTimer()
        results[fast] = diagnose(vol, model, ckpt, progress=False, fast=fast, timer=timer)
        print(f"  fast={fast}: {timer.seconds}")

    report(
        time_interleaved({"plain": lambda: run(False), "fast": lambda: run(True)}, args.rounds, 0), 1, "plain"
    )
    a, b = results[False], results[True]
    print(
        f"  lung Dice {dice(a.lung, b.lung):.5f}  infection Dice {dice(a.infection, b.infection):.5f}  "
        f"probability maxdiff {np.abs(a.slice_probabilities - b.slice_probabilities).max():.4f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lever", choices=["ladder", "batch", "stream", "bf16", "sparsity", "diagnose"])
    p.add_argument("ct", nargs="?", help="a CT file (stream, diagnose)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {
        "ladder": ladder,
        "batch": batch,
        "stream": stream,
        "bf16": bf16,
        "sparsity": sparsity,
        "diagnose": diagnose_ab,
    }[args.lever](args)


if __name__ == "__main__":
    main()
