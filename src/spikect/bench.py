"""Speed and memory figures of one config on this machine, as a dict and a JSON file.

Everything is measured in ONE run and the figures are meant to be read as ratios of each other (e.g. the
model's GFLOP/s against a plain matmul's): on a shared, noisy machine, absolute times from different runs
are not comparable. Each figure comes from a small ``measure_*`` function, so later figures are one more
function and one more key.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from spikect.config import Config, load_config
from spikect.losses import MultiTaskLoss
from spikect.model.network import MultiTaskNet

NOTES = (
    "FLOPs: the conv/linear/matmul ops that actually execute in one forward of one slice "
    "(torch FlopCounterMode); the first conv reads the static image, so it runs once for all T steps, "
    "not T times. Elementwise work (BatchNorm, LIF updates, pooling) is not counted.",
    "peak_rss_gb is the peak resident memory of the whole process (ru_maxrss), normally set by the train "
    "step.",
    "Times are medians over the iterations listed after a warm-up (the train warm-up uses a batch of 2); "
    "compare ratios within one run only.",
)


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (10⁹ bytes)."""
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


def train_step(cfg: Config) -> Callable[[dict[str, torch.Tensor]], None]:
    """One training step on a fresh model: forward, the real ``MultiTaskLoss``, backward, gradient
    clipping and an AdamW step (what ``spikect train`` does per batch)."""
    model = build_model(cfg).train()
    loss_fn = MultiTaskLoss(cfg.model.heads, cfg.loss)
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


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with the config's ``train.threads`` (as training would), then restore the previous count."""
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
) -> dict[str, Any]:
    """Measure one config (a YAML path or a ``Config``; ``None`` = ``Config()`` defaults), print a table,
    write the dict as JSON to ``json_out`` when given, and return it.

    ``train_batch`` defaults to the config's ``train.batch_size``. ``budget_s`` caps the timed iterations of
    each of the train and inference measurements (at least one is always timed).
    """
    cfg = config if isinstance(config, Config) else load_config(config) if config is not None else Config()
    train_batch = train_batch or cfg.train.batch_size
    result: dict[str, Any] = {}
    bar = tqdm(total=5, desc="bench", file=sys.stderr, disable=not progress)
    with _threads(cfg.train.threads), bar:

        def stage(name: str) -> None:
            bar.set_description(f"bench: {name}")

        stage("build + FLOPs")
        model = build_model(cfg)
        result["model_gflop_per_slice"] = measure_flops(model, cfg)
        bar.update()
        stage(f"matmul {matmul_size}²")
        result["matmul_peak_gflops_per_s"] = measure_matmul(matmul_size)
        bar.update()
        stage(f"inference, batch {infer_batch}")
        infer = measure_infer(model, cfg, infer_batch, infer_iters, warmup, budget_s)
        result["infer_ms_per_slice"], infer_n = infer
        del model
        gc.collect()
        bar.update()
        stage(f"train step, batch {train_batch}")
        result["train_ms_per_slice"], train_n = measure_train(cfg, train_batch, train_iters, warmup, budget_s)
        bar.update()
        result["peak_rss_gb"] = peak_rss_gb()
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
            train_iters=train_n,
            infer_batch=infer_batch,
            infer_iters=infer_n,
            matmul_size=matmul_size,
        )
        bar.update()
    print(format_table(result))
    if json_out is not None:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


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
            f"inference_mode, batch {r['infer_batch']}, median of {r['infer_iters']}",
        ),
        ("model_gflop_per_slice", f"{r['model_gflop_per_slice']:.3f}", "one forward, one slice (see note)"),
        ("model_gflops_per_s", f"{r['model_gflops_per_s']:.1f}", f"{share:.0%} of the matmul peak"),
        (
            "matmul_peak_gflops_per_s",
            f"{r['matmul_peak_gflops_per_s']:.1f}",
            f"fp32 mm {r['matmul_size']}², best of 5",
        ),
        ("peak_rss_gb", f"{r['peak_rss_gb']:.2f}", "process peak"),
    ]
    head = (
        f"spikect bench: image {r['image_size']}², T={r['t_steps']}, widths {r['widths']}, "
        f"{r['neuron']}; {r['threads']} thread(s), torch {r['torch_version']}, {r['cpu']}"
    )
    lines = [head, *(f"  {k:<26}{v:>12}   {note}" for k, v, note in rows)]
    return "\n".join([*lines, *(f"  note: {n}" for n in NOTES)])
