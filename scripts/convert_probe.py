"""Convert a trained ANN twin into the spiking network and save it as a checkpoint that
``spikect evaluate`` scores and ``spikect train --resume`` fine-tunes (epoch -1: nothing trained yet).

    python scripts/convert_probe.py ANN.safetensors OUT.safetensors --scale 2 [--epochs 2 --lr 2e-3]

What ``train.ann_warmup_epochs`` does inside one run, as a separate step, so the conversion can be probed on
an existing ANN checkpoint (e.g. ``spikect compare``'s baselines) without training the twin again.
"""

from __future__ import annotations

import argparse

import torch

from spikect.checkpoint import load_checkpoint, save_checkpoint
from spikect.config import config_from_dict
from spikect.data.splits import Split
from spikect.losses import MultiTaskLoss
from spikect.model.convert import convert
from spikect.train import calibration_images, fresh_state, make_loaders


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ann", help="a checkpoint of an ANN twin (model.neuron.kind relu, T = 1)")
    p.add_argument("out", help="where to write the converted spiking checkpoint")
    p.add_argument("--scale", type=float, default=2.0, help="BatchNorm affine x this (default 2)")
    p.add_argument("--batches", type=int, default=40, help="calibration batches (default 40)")
    p.add_argument("--t-steps", type=int, default=4, help="T of the spiking network (default 4)")
    p.add_argument("--epochs", type=int, default=2, help="epochs a later --resume fine-tunes for")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the ANN's)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ann = load_checkpoint(a.ann)
    d = ann.config.to_dict()
    d["model"]["neuron"]["kind"], d["model"]["t_steps"] = "lif", a.t_steps
    lr = a.lr or d["train"]["lr"]
    d["train"].update(epochs=a.epochs, threads=a.threads, lr=lr, convert_batches=a.batches)
    cfg = config_from_dict(d)
    loader, _, sampler = make_loaders(cfg, Split.from_dict(ann.meta["split"]))
    model = convert(ann.model, cfg.model, calibration_images(cfg, loader, sampler), a.scale)
    meta = {**fresh_state(), "split": ann.meta["split"]}
    save_checkpoint(a.out, model, cfg, meta, MultiTaskLoss(cfg.model.heads, cfg.loss, cfg.model.t_steps))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
