"""Speed and memory figures of one config on this machine, as a dict and a JSON file.

Everything is measured in ONE run and the figures are meant to be read as ratios of each other (e.g. the
model's GFLOP/s against a plain matmul's): on a shared, noisy machine, absolute times from different runs
are not comparable. Each figure comes from a small ``measure_*`` function, so later figures are one more
function and one more key.

Issue 7's figures: ``ct300_seconds`` runs the real ``spikect diagnose`` path
(:func:`spikect.diagnose.run_diagnose` with its :class:`~spikect.diagnose.StageTimer` hook) on a generated
300-slice 512² HU volume, file read to outputs written; ``train_epoch_minutes`` times real training (and
validation) batches of the config's data and scales them to one epoch (or, with ``full_epoch``, runs one).
The diagnose run and the train measurements each run in a spawned child process, so that their peak
memories (VmHWM) are their own. ``targets`` checks the figures against the issue's goals. See
``docs/performance.md``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from spikect.config import Config, load_config
from spikect.losses import MultiTaskLoss
from spikect.model.convert import ann_twin
from spikect.model.inference import as_input, optimize_for_inference, reuse_freed_memory
from spikect.model.network import MultiTaskNet

NOTES = (
    "FLOPs: the conv/linear/matmul ops that actually execute in one forward of one slice "
    "(torch FlopCounterMode); the first conv reads the static image, so it runs once for all T steps, "
    "not T times. Elementwise work (BatchNorm, LIF updates, pooling) is not counted.",
    "infer_ms_per_slice is the optimised copy diagnose runs (channels_last, BatchNorm folded); "
    "infer_ms_per_slice_plain the model as trained; both, and the ANN twin, with glibc's freed memory "
    "kept for reuse as in diagnose. model_gflops_per_s uses the optimised time.",
    "peak_rss_gb_diagnose / _train: peak resident memory (VmHWM) of a child process that ran only the "
    "diagnose run / only the train measurements; peak_rss_gb: the largest of those and this process's.",
    "train_epoch_minutes is extrapolated from the timed batches listed (real data through the real loader, "
    "loss, backward and AdamW; validation batches likewise) to one epoch's batch counts, unless marked "
    "'full epoch'.",
    "Times are medians over the iterations listed after a warm-up (the train warm-up uses a batch of 2); "
    "compare ratios within one run only: on a shared machine absolute times move with the load.",
)

CT_TARGET_SLICES, CT_TARGET_SIZE = 300, 512


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (10⁹ bytes).

    VmHWM where Linux has it: unlike ru_maxrss it belongs to this process's own memory map, so a child
    started by fork + exec does not inherit its parent's peak."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # macOS: bytes, Linux: KiB


def time_calls(fn: Callable[[], Any], iters: int, warmup: int = 1, budget_s: float = math.inf) -> list[float]:
    """Seconds of each of up to ``iters`` calls after ``warmup`` untimed ones; stops early (after at least
    one timed call) once the timed calls have used ``budget_s``, so a slow config cannot run away."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < max(iters, 1) and sum(times) < budget_s:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def time_interleaved(
    fns: dict[str, Callable[[], Any]], iters: int, warmup: int = 1, budget_s: float = math.inf
) -> dict[str, list[float]]:
    """Like :func:`time_calls` for several functions called in turn (A, B, A, B, ...), so that a change in
    the machine's load hits all of them alike and their ratio stays meaningful."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    while min(len(t) for t in times.values()) < max(iters, 1) and sum(map(sum, times.values())) < budget_s:
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return times


def random_batch(cfg: Config, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch shaped like the data pipeline's: image, cls label, and every seg head's mask (all present)."""
    g = torch.Generator().manual_seed(seed)
    size, heads = cfg.model.image_size, cfg.model.heads
    batch = {"image": torch.rand(batch_size, cfg.model.in_channels, size, size, generator=g)}
    num_classes = max((h.num_classes for h in heads if h.type == "cls"), default=2)
    batch["label"] = torch.randint(0, num_classes, (batch_size,), generator=g)
    for h in heads:
        if h.type == "seg":
            batch[h.mask] = (torch.rand(batch_size, 1, size, size, generator=g) > 0.7).float()
            batch[f"has_{h.mask}"] = torch.ones(batch_size, dtype=torch.bool)
    return batch


def build_model(cfg: Config, seed: int = 0) -> MultiTaskNet:
    torch.manual_seed(seed)
    return MultiTaskNet(cfg.model)


def measure_flops(model: MultiTaskNet, cfg: Config) -> float:
    """GFLOP of one forward of one slice (eval mode), counted on what actually executes."""
    x = torch.rand(1, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


def measure_matmul(size: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` GFLOP/s of a ``size``² fp32 ``torch.mm``: this machine's practical peak."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    times = time_calls(lambda: torch.mm(a, b), iters=reps, warmup=1)
    return 2 * size**3 / min(times) / 1e9


def measure_infer(
    model: MultiTaskNet, cfg: Config, batch_size: int, iters: int, warmup: int, budget_s: float
) -> tuple[float, int]:
    """(median ms per slice, timed iterations) of eval-mode forwards under ``torch.inference_mode``."""
    x = random_batch(cfg, batch_size)["image"]
    model.eval()
    with torch.inference_mode():
        times = time_calls(lambda: model(x), iters, warmup, budget_s)
    return statistics.median(times) * 1000 / batch_size, len(times)


def measure_infer_variants(
    nets: dict[str, tuple[MultiTaskNet, Config]], batch_size: int, iters: int, warmup: int, budget_s: float
) -> tuple[dict[str, float], int]:
    """Median ms per slice of each ``name: (net, config)`` under ``torch.inference_mode``, timed in turn
    on the same random batch (laid out as each net wants it: :func:`as_input`)."""
    calls = {}
    for name, (net, cfg) in nets.items():
        x = as_input(net, random_batch(cfg, batch_size)["image"])
        calls[name] = functools.partial(net.eval(), x)
    with torch.inference_mode():
        times = time_interleaved(calls, iters, warmup, budget_s)
    return {k: statistics.median(v) * 1000 / batch_size for k, v in times.items()}, min(
        map(len, times.values())
    )


def train_step(cfg: Config) -> Callable[[dict[str, torch.Tensor]], None]:
    """One training step on a fresh model: forward, the real ``MultiTaskLoss``, backward, gradient
    clipping and an AdamW step (what ``spikect train`` does per batch)."""
    model = build_model(cfg).train()
    loss_fn = MultiTaskLoss(cfg.model.heads, cfg.loss, cfg.model.t_steps)
    params = [p for p in (*model.parameters(), *loss_fn.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def step(batch: dict[str, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model(batch["image"]), batch)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()

    return step


def measure_train(
    cfg: Config, batch_size: int, iters: int, warmup: int, budget_s: float
) -> tuple[float, int]:
    """(median ms per slice, timed iterations) of ``train_step`` on a random batch of ``batch_size``.

    The warm-up steps use a batch of 2 (the least BatchNorm accepts): they only pay the one-time costs
    (kernel selection, optimizer state), and a full-size one would double the run for a large config.
    """
    step = train_step(cfg)
    small, batch = random_batch(cfg, min(batch_size, 2)), random_batch(cfg, batch_size)
    for _ in range(warmup):
        step(small)
    times = time_calls(functools.partial(step, batch), iters, 0, budget_s)
    del step, small, batch  # free the model, activations and optimizer state before anything else runs
    gc.collect()
    return statistics.median(times) * 1000 / batch_size, len(times)


class _Take:
    """The first ``n`` batches of a loader, drawn lazily (so the timing includes loading them)."""

    def __init__(self, loader: Iterable[Any], n: int) -> None:
        self.loader, self.n = loader, n

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                return
            yield batch


def measure_epoch(
    cfg: Config, steps: int, full: bool = False, progress: bool = False, data_base: str | Path | None = None
) -> dict[str, Any]:
    """Minutes of one training epoch of ``cfg`` on its real data: the training pass (loader, forward, loss,
    backward, AdamW) plus the validation pass, as ``spikect train`` runs them.

    With ``full`` both passes run completely; otherwise ``steps`` batches of each are timed (after one
    untimed training batch that pays the one-time costs) and scaled to the epoch's batch counts.
    """
    from spikect.data.splits import make_splits
    from spikect.train import Objective, make_loaders, run_epoch, seed_everything

    seed_everything(cfg.train.seed)
    split = make_splits(cfg.data, data_base)
    train_loader, val_loader, _ = make_loaders(cfg, split)
    model = MultiTaskNet(cfg.model)
    loss_fn = MultiTaskLoss(cfg.model.heads, cfg.loss, cfg.model.t_steps)
    params = [*model.parameters(), *(p for p in loss_fn.parameters() if p.requires_grad)]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    objective = Objective.from_config(model, loss_fn, cfg)  # with every loss term the config trains
    device = torch.device("cpu")
    n_train, n_val = len(train_loader), len(val_loader)

    def run(loader: Iterable[Any], train: bool, desc: str) -> float:
        start = time.perf_counter()
        run_epoch(
            objective,
            loader,  # type: ignore[arg-type]
            device,
            optimizer if train else None,
            cfg.train.grad_clip,
            desc=desc,
            progress=progress,
        )
        return time.perf_counter() - start

    run(_Take(train_loader, 1), True, "warm-up")
    if full:
        train_s, val_s = run(train_loader, True, "train epoch"), run(val_loader, False, "validation")
        timed_train, timed_val = n_train, n_val
    else:
        timed_train, timed_val = min(steps, n_train), min(steps, n_val)
        train_s = run(_Take(train_loader, timed_train), True, "train batches") / max(timed_train, 1) * n_train
        val_s = (
            run(_Take(val_loader, timed_val), False, "val batches") / max(timed_val, 1) * n_val
            if n_val
            else 0.0
        )
    return {
        "train_epoch_minutes": (train_s + val_s) / 60,
        "train_epoch_mode": "full epoch"
        if full
        else f"extrapolated from {timed_train} train + {timed_val} val batches",
        "train_epoch_batches": n_train,
        "train_epoch_slices": n_train * cfg.train.batch_size,
        "val_batches": n_val,
        "train_pass_minutes": train_s / 60,
        "val_pass_minutes": val_s / 60,
    }


def _child_train(
    cfg: Config,
    threads: int | None,
    train_batch: int,
    train_iters: int,
    warmup: int,
    budget_s: float,
    epoch_steps: int,
    full_epoch: bool,
    progress: bool,
    data_base: str | None,
) -> dict[str, Any]:
    """In a child process: the random-batch train step, then the epoch on real data; its own peak memory."""
    if threads:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    out["train_ms_per_slice"], out["train_iters"] = measure_train(
        cfg, train_batch, train_iters, warmup, budget_s
    )
    if epoch_steps > 0 or full_epoch:
        try:
            out.update(measure_epoch(cfg, epoch_steps, full_epoch, progress, data_base))
        except (OSError, ValueError) as exc:  # no data here: the other figures still stand
            out["train_epoch_minutes"] = None
            out["train_epoch_mode"] = f"not measured: {' '.join(str(exc).split())[:200]}"
    out["peak_rss_gb_train"] = peak_rss_gb()
    return out


def _child_phantom(path: str, slices: int, size: int) -> str:
    from spikect.phantom import write_ct_nifti

    return str(write_ct_nifti(path, slices=slices, size=size))


def _child_diagnose(
    ct: str, weights: str, out: str, batch_size: int, threads: int | None, progress: bool, fast: bool
) -> dict[str, Any]:
    """In a child process: ``run_diagnose`` on one file with the stage timer; its own peak memory."""
    from spikect.diagnose import StageTimer, run_diagnose

    if threads:
        torch.set_num_threads(threads)
    timer = StageTimer()
    status = run_diagnose(
        [ct], out, weights, batch_size=batch_size, progress=progress, timer=timer, fast=fast
    )
    if status != 0:
        raise RuntimeError(f"spikect diagnose failed on the generated volume (exit status {status})")
    return {"seconds": timer.elapsed, "stages": dict(timer.seconds), "peak_rss_gb": peak_rss_gb()}


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh (spawned) Python process: its memory peak is its own, and nothing it
    allocates stays in this process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


PHANTOM_IN_PROCESS_VOXELS = 2_000_000


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def measure_ct(
    cfg: Config,
    weights: str | Path | None,
    slices: int,
    size: int,
    batch_size: int,
    threads: int | None,
    progress: bool,
    fast: bool = True,
) -> dict[str, Any]:
    """``spikect diagnose`` (nifti + png outputs) on a generated ``slices`` x ``size``² HU volume, timed from
    reading the file to the outputs written (generating it, starting the child and loading the model are
    not counted). ``weights=None`` uses a randomly initialised checkpoint of ``cfg``: same speed, no
    meaningful masks."""
    with tempfile.TemporaryDirectory(prefix="spikect-bench-") as tmp:
        # a large phantom needs GBs of temporaries (phantom.write_ct_nifti): keep them out of this process
        make = in_child if slices * size * size > PHANTOM_IN_PROCESS_VOXELS else _call
        ct = make(_child_phantom, str(Path(tmp) / f"ct{slices}.nii.gz"), slices, size)
        if weights is None:
            from spikect.checkpoint import save_checkpoint

            weights = Path(tmp) / "random.safetensors"
            save_checkpoint(weights, build_model(cfg), cfg)
        run = in_child(
            _child_diagnose, ct, str(weights), str(Path(tmp) / "out"), batch_size, threads, progress, fast
        )
    stages = {k: run["stages"].get(k, 0.0) for k in ("read", "preprocess", "model", "postprocess", "write")}
    return {
        "ct300_seconds": run["seconds"],
        "ct300_stages": stages,
        "slices_per_s": slices / run["seconds"],
        "peak_rss_gb_diagnose": run["peak_rss_gb"],
        "ct_slices": slices,
        "ct_size": size,
        "diagnose_batch": batch_size,
    }


def check_targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 7's goals: PASS / FAIL, or n/a when the figure was not measured at the target's size."""
    full_ct = r.get("ct_slices") == CT_TARGET_SLICES and r.get("ct_size") == CT_TARGET_SIZE
    share = r["model_gflops_per_s"] / r["matmul_peak_gflops_per_s"]
    rows = {
        "ct300_seconds <= 60": (r.get("ct300_seconds") if full_ct else None, 60.0, "<="),
        "model_gflops_per_s >= 0.6 x matmul peak": (share, 0.6, ">="),
        "train_epoch_minutes <= 15": (r.get("train_epoch_minutes"), 15.0, "<="),
        "peak_rss_gb_train <= 8": (r.get("peak_rss_gb_train"), 8.0, "<="),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, (value, limit, op) in rows.items():
        if value is None:
            status = "n/a"
        else:
            ok = value <= limit if op == "<=" else value >= limit
            status = "PASS" if ok else "FAIL"
        out[name] = {"value": value, "limit": limit, "status": status}
    return out


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` threads (default: torch's), then restore the previous count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_bench(
    config: str | Path | Config | None = None,
    json_out: str | Path | None = None,
    *,
    infer_batch: int = 8,
    train_batch: int | None = None,
    infer_iters: int = 5,
    train_iters: int = 3,
    warmup: int = 1,
    budget_s: float = 20.0,
    matmul_size: int = 2048,
    progress: bool = True,
    weights: str | Path | None = None,
    ct_slices: int = CT_TARGET_SLICES,
    ct_size: int = CT_TARGET_SIZE,
    diagnose_batch: int = 8,
    epoch_steps: int = 8,
    full_epoch: bool = False,
    threads: int | None = None,
    data_base: str | Path | None = None,
) -> dict[str, Any]:
    """Measure one config (a YAML path or a ``Config``; ``None`` = ``Config()`` defaults), print a table,
    write the dict as JSON to ``json_out`` when given, and return it.

    ``train_batch`` defaults to the config's ``train.batch_size``; ``threads`` to the config's
    ``train.threads`` (else torch's default). ``budget_s`` caps the timed iterations of each of the train
    and inference measurements (at least one is always timed). ``weights`` is the checkpoint the diagnose
    run loads (``None``: a random initialisation of the config). ``ct_slices = 0`` skips the diagnose run,
    ``epoch_steps = 0`` the epoch (``full_epoch`` runs a whole one); ``data_base`` is the folder the
    config's data roots are relative to (default: the working directory).
    """
    cfg = config if isinstance(config, Config) else load_config(config) if config is not None else Config()
    train_batch = train_batch or cfg.train.batch_size
    threads = threads or cfg.train.threads
    result: dict[str, Any] = {}
    bar = tqdm(total=6, desc="bench", file=sys.stderr, disable=not progress)
    with _threads(threads), bar:

        def stage(name: str) -> None:
            bar.set_description(f"bench: {name}")

        stage("build + FLOPs")
        model = build_model(cfg)
        result["model_gflop_per_slice"] = measure_flops(model, cfg)
        bar.update()
        stage(f"matmul {matmul_size}²")
        result["matmul_peak_gflops_per_s"] = measure_matmul(matmul_size)
        bar.update()
        stage(f"inference, batch {infer_batch}: plain / optimised SNN, ANN twin")
        reuse_freed_memory()  # as spikect diagnose runs (for all three nets alike)
        twin = ann_twin(cfg)
        nets = {
            "plain": (model, cfg),
            "fast": (optimize_for_inference(model), cfg),
            "ann": (optimize_for_inference(build_model(twin)), twin),
        }
        ms, infer_n = measure_infer_variants(nets, infer_batch, infer_iters, warmup, budget_s)
        result["infer_ms_per_slice"], result["infer_ms_per_slice_plain"] = ms["fast"], ms["plain"]
        result["ann_infer_ms_per_slice"] = ms["ann"]
        result["snn_vs_ann_time"] = ms["fast"] / ms["ann"]
        del model, nets
        gc.collect()
        bar.update()
        stage(
            f"train step, batch {train_batch}"
            + (" + full epoch" if full_epoch else f" + {epoch_steps} real batches")
        )
        result.update(
            in_child(
                _child_train,
                cfg,
                threads,
                train_batch,
                train_iters,
                warmup,
                budget_s,
                epoch_steps,
                full_epoch,
                progress,
                None if data_base is None else str(data_base),
            )
        )
        bar.update()
        if ct_slices > 0:
            stage(f"diagnose {ct_slices} x {ct_size}²")
            result.update(measure_ct(cfg, weights, ct_slices, ct_size, diagnose_batch, threads, progress))
        bar.update()
        result["peak_rss_gb"] = max(
            peak_rss_gb(), result.get("peak_rss_gb_train", 0.0), result.get("peak_rss_gb_diagnose", 0.0)
        )
        result["model_gflops_per_s"] = result["model_gflop_per_slice"] / (result["infer_ms_per_slice"] / 1000)
        result.update(
            threads=torch.get_num_threads(),
            torch_version=torch.__version__,
            cpu=cpu_name(),
            t_steps=cfg.model.t_steps,
            image_size=cfg.model.image_size,
            widths=list(cfg.model.widths),
            neuron=cfg.model.neuron.kind,
            train_batch=train_batch,
            infer_batch=infer_batch,
            infer_iters=infer_n,
            matmul_size=matmul_size,
            weights=str(weights) if weights is not None else "random init",
            load_average=_load_average(),
        )
        result["targets"] = check_targets(result)
        bar.update()
    print(format_table(result))
    if json_out is not None:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _load_average() -> list[float] | None:
    """The 1/5/15-minute load average when the run ended: a busy machine slows every figure."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def format_table(r: dict[str, Any]) -> str:
    share = r["model_gflops_per_s"] / r["matmul_peak_gflops_per_s"]
    rows = [
        (
            "train_ms_per_slice",
            f"{r['train_ms_per_slice']:.1f}",
            f"fwd + loss + bwd + AdamW, batch {r['train_batch']}, median of {r['train_iters']}",
        ),
        (
            "infer_ms_per_slice",
            f"{r['infer_ms_per_slice']:.1f}",
            f"optimised copy, inference_mode, batch {r['infer_batch']}, median of {r['infer_iters']}",
        ),
        ("infer_ms_per_slice_plain", f"{r['infer_ms_per_slice_plain']:.1f}", "the model as trained"),
        (
            "snn_vs_ann_time",
            f"{r['snn_vs_ann_time']:.2f}",
            f"hybrid SNN / same net as ANN (ReLU, T=1: {r['ann_infer_ms_per_slice']:.1f} ms/slice)",
        ),
        ("model_gflop_per_slice", f"{r['model_gflop_per_slice']:.3f}", "one forward, one slice (see note)"),
        ("model_gflops_per_s", f"{r['model_gflops_per_s']:.1f}", f"{share:.0%} of the matmul peak"),
        (
            "matmul_peak_gflops_per_s",
            f"{r['matmul_peak_gflops_per_s']:.1f}",
            f"fp32 mm {r['matmul_size']}², best of 5",
        ),
    ]
    if "ct300_seconds" in r:
        st = r["ct300_stages"]
        rows += [
            (
                "ct300_seconds",
                f"{r['ct300_seconds']:.1f}",
                f"spikect diagnose, {r['ct_slices']} x {r['ct_size']}² HU NIfTI, file to outputs, "
                f"batch {r['diagnose_batch']}",
            ),
            ("  stages (s)", "", ", ".join(f"{k} {v:.1f}" for k, v in st.items())),
            ("slices_per_s", f"{r['slices_per_s']:.1f}", ""),
            (
                "peak_rss_gb_diagnose",
                f"{r['peak_rss_gb_diagnose']:.2f}",
                "child process running only diagnose",
            ),
        ]
    epoch = r.get("train_epoch_minutes")
    rows += [
        (
            "train_epoch_minutes",
            "n/a" if epoch is None else f"{epoch:.1f}",
            r.get("train_epoch_mode", "not measured")
            + (f"; {r['train_epoch_batches']} batches of {r['train_batch']}" if epoch is not None else ""),
        ),
        (
            "peak_rss_gb_train",
            f"{r['peak_rss_gb_train']:.2f}",
            "child process running only the train figures",
        ),
        ("peak_rss_gb", f"{r['peak_rss_gb']:.2f}", "largest of all processes"),
    ]
    load = r.get("load_average")
    head = (
        f"spikect bench: image {r['image_size']}², T={r['t_steps']}, widths {r['widths']}, "
        f"{r['neuron']}; {r['threads']} thread(s), torch {r['torch_version']}, {r['cpu']}"
        + (f"; load average {load[0]:.1f} (other work on the machine slows every figure)" if load else "")
    )
    lines = [head, *(f"  {k:<26}{v:>12}   {note}" for k, v, note in rows)]
    targets = [f"  target {v['status']:<5} {name}" for name, v in r.get("targets", {}).items()]
    return "\n".join([*lines, *targets, *(f"  note: {n}" for n in NOTES)])


QUICK = {
    "ct_slices": 8,
    "ct_size": 64,
    "matmul_size": 256,
    "infer_iters": 2,
    "train_iters": 2,
    "epoch_steps": 2,
}


def bench_command(args: Any) -> dict[str, Any]:
    """``spikect bench`` from its parsed arguments (see ``spikect bench --help``).

    ``--quick`` measures the packaged tiny config on an 8-slice 64² volume with few iterations: a smoke run
    of every measurement in seconds, whose figures say nothing about the targets. ``--weights`` without
    ``--config`` measures that checkpoint under its own config (``--weights default``: exactly the model
    ``spikect diagnose`` ships with). Otherwise the config is measured, with the shipped weights when they
    fit it and a random initialisation when not (same speed).
    """
    from importlib import resources

    from spikect.checkpoint import load_checkpoint

    packaged = Path(str(resources.files("spikect") / "configs"))
    weights = args.weights
    if weights is not None and not args.config:
        cfg = load_checkpoint(weights).config
    else:
        cfg = load_config(
            Path(args.config) if args.config else packaged / ("tiny.yaml" if args.quick else "default.yaml")
        )
        if weights is None and not args.quick:
            weights = "default" if load_checkpoint("default").config.model == cfg.model else None
    opts: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.ct_slices is not None:
        opts["ct_slices"] = args.ct_slices
    if args.ct_size is not None:
        opts["ct_size"] = args.ct_size
    if not args.quick:
        opts["epoch_steps"] = args.epoch_steps
    return run_bench(
        cfg,
        args.json,
        weights=weights,
        threads=args.threads,
        full_epoch=args.full_epoch,
        diagnose_batch=args.batch_size,
        progress=not args.no_progress,
        **opts,
    )
