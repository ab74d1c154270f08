"""``spikect energy``: estimated inference energy of the hybrid network against the same network as an ANN.

Operation counts. ``FlopCounterMode`` counts what each conv / transposed conv / linear op *executes*, in
FLOPs, with one multiply-add = 2 FLOPs (bias adds are not counted; BatchNorm is folded into the preceding
op for inference and costs nothing). Energies are per operation: ``E_MAC`` per multiply-accumulate (MAC =
FLOPs/2) and ``E_AC`` per accumulate (AC). So "FP" of the patent's formula is counted here in MACs =
FLOPs/2, the number of synaptic operations a dense input would trigger.

Per layer, decided from what its op actually reads on the data (a forward pre-hook on every weight op:
each ``HybridLayer.op`` and ``SegHead.out``):

- ``ac`` (spike-driven): a time-sequence input (T folded into the batch) every element of which, over all
  T steps, the batch and all images, is 0 or 1. Only a spike triggers work, one AC per synapse it reaches:
  ``E = FLOPs_executed/2 · R_fire · E_AC``, with ``R_fire`` = fraction of nonzero input elements. T enters
  once: the op runs on all T steps folded into the batch, so ``FLOPs_executed`` = T × the FLOPs of one step
  and ``R_fire`` is the rate per neuron per step; equivalently FLOPs_step/2 × (spikes per input neuron over
  the T steps) × E_AC. ``FLOPs × R_fire`` assumes spikes spread evenly over positions: exact for linear and
  1×1 convs; for a k×k conv with zero padding a border spike reaches fewer outputs, so it is the average.
- ``mac`` (real-valued input): the first conv reading the image, each head's first layer reading the
  encoder's u(T)/T, and any op whose input is not binary. A ``HybridLayer`` fed a static ``[B, ...]``
  input is always ``mac``: that input is real-valued by construction, even on an image where it happens to
  be all zeros. Every MAC executes: ``E = FLOPs_executed/2 · E_MAC``. Under direct encoding a static input
  is the same at every step, so the hybrid model computes that layer ONCE (FLOPs counted as executed, not
  T times).

``E_hybrid`` = Σ over layers of the above. ``E_conv`` is the same architecture run as an ANN (T = 1, ReLU
in place of LIF): every layer is a MAC layer with the FLOPs of one step, ``FLOPs_ann`` = executed FLOPs /
steps folded into that call's batch (T for sequence layers, 1 for static ones), ``E = FLOPs_ann/2 ·
E_MAC``. ``energy_ratio`` = E_hybrid / E_conv. All figures are per image, averaged over the images given.

Defaults: E_AC = 0.9 pJ (32-bit float add) and E_MAC = 4.6 pJ (32-bit float multiply-add), the usual 45 nm
figures in the SNN literature; ``energy_ratio_int_add`` is the ratio with E_AC = 0.1 pJ (32-bit integer
add, the patent's figure), E_MAC unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from spikingjelly.activation_based import functional
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from spikect.config import DataConfig
from spikect.model.hybrid import HybridLayer

E_AC_PJ = 0.9  # 32-bit float add
E_MAC_PJ = 4.6  # 32-bit float multiply (3.7) + add (0.9)
E_AC_INT_ADD_PJ = 0.1  # 32-bit integer add: the patent's E_AC

WEIGHT_OPS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)

NOTES = (
    "FLOPs from torch FlopCounterMode, 1 MAC = 2 FLOPs; energies per MAC (E_MAC) or per AC (E_AC).",
    "mac: real-valued or static input (image, u(T)/T): FLOPs_exec/2 x E_MAC; a static input is computed "
    "once, not T times.",
    "ac: binary spike input: FLOPs_exec/2 x rate x E_AC; FLOPs_exec holds all T steps and rate is per "
    "neuron per step, so T enters once.",
    "ANN: same layers at T = 1 (FLOPs_ann = FLOPs_exec / steps), all at E_MAC. BN folded, bias not counted.",
)


@dataclass
class _Inputs:
    """What one op read during one forward pass (pooled over its calls in that pass)."""

    calls: int = 0
    static_calls: int = 0  # calls where its HybridLayer got a static [B, ...] input (image or u(T)/T)
    rows: int = 0  # leading (batch) size of its inputs: B for a static input, T·B for a sequence
    nonzero: int = 0
    numel: int = 0
    binary: bool = True


@dataclass
class _Tally:
    """One op, summed over all batches."""

    flops: float = 0.0  # executed
    flops_ann: float = 0.0
    ac_ops: float = 0.0  # Σ FLOPs/2 · rate, the accumulates spikes trigger
    nonzero: int = 0
    numel: int = 0
    binary: bool = True
    static: bool = False
    called: bool = False


def weight_ops(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv / transposed conv / linear of ``model`` by qualified name: the ops that cost energy."""
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_OPS)}


def model_t_steps(model: nn.Module) -> int:
    return max((m.t_steps for m in model.modules() if isinstance(m, HybridLayer)), default=1)


def _images(batch: torch.Tensor | Mapping[str, Any]) -> torch.Tensor:
    return batch["image"] if isinstance(batch, Mapping) else batch


def _energies(tallies: dict[str, _Tally], n: int, e_ac_pj: float, e_mac_pj: float) -> dict[str, Any]:
    layers = []
    for name, t in tallies.items():
        kind = "ac" if t.binary and not t.static else "mac"
        energy = t.ac_ops * e_ac_pj if kind == "ac" else t.flops / 2 * e_mac_pj
        layers.append(
            {
                "name": name,
                "kind": kind,
                "flops": t.flops / n,
                "flops_ann": t.flops_ann / n,
                "firing_rate": t.nonzero / t.numel if kind == "ac" and t.numel else None,
                "energy_pj": energy / n,
                "energy_ann_pj": t.flops_ann / 2 * e_mac_pj / n,
            }
        )
    e_hybrid = sum(layer["energy_pj"] for layer in layers)
    e_conv = sum(layer["energy_ann_pj"] for layer in layers)
    return {"e_hybrid_pj": e_hybrid, "e_conv_pj": e_conv, "layers": layers}


def measure_energy(
    model: nn.Module,
    batches: Iterable[torch.Tensor | Mapping[str, Any]],
    e_ac_pj: float = E_AC_PJ,
    e_mac_pj: float = E_MAC_PJ,
    t_steps: int | None = None,
) -> dict[str, Any]:
    """Run ``model`` (eval mode, no grad) on ``batches`` (image tensors ``[B, C, H, W]`` or dicts with an
    ``image`` key) and return the per-image energy estimate described in the module docstring.

    Keys: ``energy_ratio``, ``energy_ratio_int_add``, ``e_hybrid_mj``, ``e_hybrid_int_add_mj``,
    ``e_conv_mj``, ``e_ac_pj``, ``e_ac_int_add_pj``, ``e_mac_pj``, ``t_steps``, ``n_images`` and ``layers``:
    ``[{name, kind, flops, flops_ann, firing_rate, energy_pj, energy_ann_pj}]`` (per image; ``firing_rate``
    is None for MAC layers, whose input is not spikes).
    """
    if e_ac_pj <= 0 or e_mac_pj <= 0:
        raise ValueError(f"energies per operation must be > 0, got E_AC {e_ac_pj}, E_MAC {e_mac_pj} pJ")
    ops = weight_ops(model)
    if not ops:
        raise ValueError("the model has no conv or linear op to count")
    # FlopCounterMode names each module "<root class>.<qualified name>" (torch's ModuleTracker)
    keys = {name: f"{type(model).__name__}.{name}" if name else type(model).__name__ for name in ops}
    tallies = {name: _Tally() for name in ops}
    seen: dict[str, _Inputs] = {}

    def pre_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            s = seen.setdefault(name, _Inputs())
            s.calls += 1
            s.rows += x.shape[0]
            s.nonzero += int(torch.count_nonzero(x))
            s.numel += x.numel()
            s.binary = s.binary and bool(((x == 0) | (x == 1)).all())

        return hook

    def static_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if args[0].dim() == mod.static_ndim:
                seen.setdefault(name, _Inputs()).static_calls += 1

        return hook

    handles = [m.register_forward_pre_hook(pre_hook(n)) for n, m in ops.items()]
    # A static input is real-valued by construction even when it happens to be all zeros (a silent
    # encoder gives u(T)/T = 0, which would pass the binary test): its op is a MAC layer regardless.
    handles += [
        m.register_forward_pre_hook(static_hook(f"{n}.op" if n else "op"))
        for n, m in model.named_modules()
        if isinstance(m, HybridLayer) and isinstance(m.op, WEIGHT_OPS)
    ]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    n_images = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                x = _images(batch).to(device)
                b = x.shape[0]
                seen.clear()
                functional.reset_net(model)  # MultiTaskNet resets itself; a plain module list may not
                with FlopCounterMode(display=False) as counter:
                    model(x)
                counts = counter.get_flop_counts()
                attributed = 0
                for name, s in seen.items():
                    flops = float(sum(counts.get(keys[name], {}).values()))
                    attributed += flops
                    t = tallies[name]
                    t.called = True
                    t.flops += flops
                    t.flops_ann += flops * b * s.calls / s.rows  # one step per call: rows/calls = steps·B
                    t.ac_ops += flops / 2 * (s.nonzero / s.numel if s.numel else 0.0)
                    t.nonzero += s.nonzero
                    t.numel += s.numel
                    t.binary = t.binary and s.binary
                    t.static = t.static or s.static_calls > 0
                total = counter.get_total_flops()
                if total != attributed:
                    raise ValueError(
                        f"{total - attributed:.0f} of {total} FLOPs ran outside a conv/linear op "
                        "(e.g. a bare matmul); this energy model cannot classify them"
                    )
                n_images += b
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_images == 0:
        raise ValueError("no images to measure energy on")

    called = {n: t for n, t in tallies.items() if t.called}
    result = _energies(called, n_images, e_ac_pj, e_mac_pj)
    e_int = _energies(called, n_images, E_AC_INT_ADD_PJ, e_mac_pj)["e_hybrid_pj"]
    e_conv = result["e_conv_pj"]
    if e_conv <= 0:
        raise ValueError("the model executed no FLOPs on these images")
    return {
        "energy_ratio": result["e_hybrid_pj"] / e_conv,
        "energy_ratio_int_add": e_int / e_conv,
        "e_hybrid_mj": result["e_hybrid_pj"] * 1e-9,
        "e_hybrid_int_add_mj": e_int * 1e-9,
        "e_conv_mj": e_conv * 1e-9,
        "e_ac_pj": e_ac_pj,
        "e_ac_int_add_pj": E_AC_INT_ADD_PJ,
        "e_mac_pj": e_mac_pj,
        "t_steps": t_steps if t_steps is not None else model_t_steps(model),
        "n_images": n_images,
        "layers": result["layers"],
        "notes": list(NOTES),
    }


def image_batches(
    root: str | Path, data_cfg: DataConfig, image_size: int, max_images: int | None, batch_size: int
) -> tuple[int, Iterator[torch.Tensor]]:
    """(image count, batches ``[B, 1, S, S]``) of the slices under ``root`` (seg, cls or nifti layout).

    With more than ``max_images`` slices, evenly spaced ones are taken so every volume/block can show up.
    """
    from spikect.data import SliceDataset, detect_layout, list_records

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    if batch_size < 1 or (max_images is not None and max_images < 1):
        raise ValueError("--batch-size and --max-images must be >= 1")
    layout = detect_layout(root)
    records = list_records(root, data_cfg, layout)
    if max_images is not None and len(records) > max_images:
        picks = np.unique(np.linspace(0, len(records) - 1, max_images).round().astype(int))
        records = [records[i] for i in picks]
    ds = SliceDataset(root, records, image_size, [], layout)  # no mask names: masks are never read

    def gen() -> Iterator[torch.Tensor]:
        for start in range(0, len(ds), batch_size):
            yield torch.stack([ds[i]["image"] for i in range(start, min(start + batch_size, len(ds)))])

    return len(ds), gen()


def run_energy(
    weights: str | Path,
    data: str | Path,
    e_ac_pj: float = E_AC_PJ,
    e_mac_pj: float = E_MAC_PJ,
    max_images: int | None = 64,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint (``'default'`` or a path) and measure its energy on up to ``max_images`` slices."""
    from spikect.checkpoint import load_model

    model, ckpt = load_model(weights)
    n, batches = image_batches(data, ckpt.config.data, ckpt.config.model.image_size, max_images, batch_size)
    bar = tqdm(batches, total=-(-n // batch_size), desc="energy", disable=not progress, dynamic_ncols=True)
    result = measure_energy(model, bar, e_ac_pj, e_mac_pj, t_steps=ckpt.config.model.t_steps)
    return {**result, "weights": str(ckpt.path), "data": str(data)}


def format_table(r: dict[str, Any]) -> str:
    """Per-layer table (per image) with the totals and the accounting rules as a footnote."""
    width = max(len(layer["name"]) for layer in r["layers"])
    head = (
        f"{'layer':<{width}}  kind  {'FLOPs exec':>14}  {'FLOPs ANN':>14}  {'rate':>6}  {'E nJ':>10}  "
        f"{'E ANN nJ':>10}"
    )
    lines = [head, "-" * len(head)]
    for layer in r["layers"]:
        rate = "-" if layer["firing_rate"] is None else f"{layer['firing_rate']:.4f}"
        lines.append(
            f"{layer['name']:<{width}}  {layer['kind']:<4}  {layer['flops']:>14,.0f}  "
            f"{layer['flops_ann']:>14,.0f}  {rate:>6}  {layer['energy_pj'] / 1e3:>10.3f}  "
            f"{layer['energy_ann_pj'] / 1e3:>10.3f}"
        )
    lines += [
        "",
        f"per image, mean of {r['n_images']} image(s), T = {r['t_steps']}:",
        f"  E_hybrid {r['e_hybrid_mj']:.6f} mJ, E_ANN {r['e_conv_mj']:.6f} mJ (E_MAC {r['e_mac_pj']} pJ)",
        f"  energy ratio {r['energy_ratio']:.4f} at E_AC {r['e_ac_pj']} pJ; "
        f"{r['energy_ratio_int_add']:.4f} at E_AC {r['e_ac_int_add_pj']} pJ (integer add)",
    ]
    return "\n".join([*lines, *(f"  note: {n}" for n in r["notes"])])
