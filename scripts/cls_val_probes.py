"""Classifier probes on a checkpoint's own split (docs/experiments.md, "Intensity augmentation and the
classifier"): AUC of the cls head with flip test-time augmentation, AUC of the infection head's predicted
area as a COVID score, and a copy with BatchNorm statistics re-estimated on training batches.

    python scripts/cls_val_probes.py tta WEIGHTS [--part val]
    python scripts/cls_val_probes.py infection-area WEIGHTS [--part val]
    python scripts/cls_val_probes.py recalibrate WEIGHTS OUT.safetensors   # then: tta OUT.safetensors
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from spikect.checkpoint import load_checkpoint, load_model, save_checkpoint
from spikect.data import build_dataset
from spikect.data.splits import Split
from spikect.losses import MultiTaskLoss
from spikect.metrics import classification_metrics
from spikect.model.convert import convert
from spikect.model.heads import class_probabilities
from spikect.train import calibration_images, make_loaders


def _outputs(weights: str, part: str, flips: list[list[int]]) -> tuple[dict, list[dict], np.ndarray]:
    """The model's heads and its outputs on the classification slices of ``part``, once per flip."""
    model, ck = load_model(weights)
    model.eval()
    ds = build_dataset(ck.config.data, Split.from_dict(ck.meta["split"]), part, ck.config.model.image_size)
    cls_set = next(d for d in ds.datasets if d.layout == "cls")
    outs: list[list[dict]] = [[] for _ in flips]
    labels: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(cls_set), 16):
            items = [cls_set[j] for j in range(start, min(start + 16, len(cls_set)))]
            x = torch.stack([it["image"] for it in items])
            labels += [int(it["label"]) for it in items]
            for i, dims in enumerate(flips):
                outs[i].append({k: v.float() for k, v in model(x.flip(dims) if dims else x).items()})
    merged = [{k: torch.cat([o[k] for o in out]) for k in out[0]} for out in outs]
    heads = {(h.type, h.mask if h.type == "seg" else ""): h.name for h in ck.config.model.heads}
    return heads, merged, np.asarray(labels)


def _auc(score: torch.Tensor, labels: np.ndarray) -> str:
    m = classification_metrics(score.numpy(), labels)
    return f"AUC {m['auc']:.3f}, sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("probe", choices=["tta", "infection-area", "recalibrate"])
    p.add_argument("weights")
    p.add_argument("out", nargs="?", help="recalibrate: where to write the copy")
    p.add_argument("--part", default="val")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.probe == "recalibrate":
        if not a.out:
            p.error("recalibrate needs OUT")
        ck = load_checkpoint(a.weights)
        cfg = ck.config
        loader, _, sampler = make_loaders(cfg, Split.from_dict(ck.meta["split"]))
        # convert() at scale 1 on a spiking state: same weights, BatchNorm re-estimated (cumulative average)
        model = convert(ck.model, cfg.model, calibration_images(cfg, loader, sampler), 1.0)
        loss = MultiTaskLoss(cfg.model.heads, cfg.loss, cfg.model.t_steps)
        save_checkpoint(a.out, model, cfg, ck.meta, loss)
        print(f"wrote {a.out}")
        return
    if a.probe == "tta":
        heads, outs, y = _outputs(a.weights, a.part, [[], [-1], [-2], [-1, -2]])
        rates = [o[heads[("cls", "")]] for o in outs]
        print("plain        ", _auc(class_probabilities(rates[0])[:, 1], y))
        print("+ hflip      ", _auc(class_probabilities((rates[0] + rates[1]) / 2)[:, 1], y))
        print("all 4 flips  ", _auc(class_probabilities(sum(rates) / 4)[:, 1], y))
        return
    heads, (out,), y = _outputs(a.weights, a.part, [[]])
    infection = out[heads[("seg", "infection")]]
    print("cls head              ", _auc(class_probabilities(out[heads[("cls", "")]])[:, 1], y))
    print("infection area > 0    ", _auc((infection > 0).float().mean((1, 2, 3)), y))


if __name__ == "__main__":
    main()
