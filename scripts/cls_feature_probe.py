"""Frozen-encoder probe: how much class information do a trained model's shared features hold?

Freezes the encoder of ``--weights``, pools its features on the classification train and validation
parts of ``--split`` (every level's spike rate, and the bottleneck's u(T)/T mean and max), then fits a
logistic regression and several spiking cls heads on them and prints each one's validation AUC. If every
head lands at the same AUC, the features, not the head, are the limit (docs/experiments.md).

    python scripts/cls_feature_probe.py --weights src/spikect/weights/default.safetensors \\
        --split runs/default/split.json
"""

from __future__ import annotations

import argparse

import torch
from monai.metrics import ROCAUCMetric
from spikingjelly.activation_based import functional

from spikect.checkpoint import load_model
from spikect.config import HeadConfig, ModelConfig
from spikect.data import build_dataset, load_split
from spikect.losses import count_ce, rate_mse
from spikect.model.heads import ClsHead, class_probabilities


def features(net, ck, split, part: str, passes: int) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    ds = build_dataset(ck.config.data, split, part, ck.config.model.image_size, augment=part == "train")
    rows, labels, cap = [], [], {}
    hook = net.encoder.register_forward_hook(lambda m, a, o: cap.__setitem__("out", o))
    for p in range(passes):
        torch.manual_seed(p)  # a new draw of augmentations per pass
        for s in range(0, len(ds), 32):
            items = [it for it in (ds[i] for i in range(s, min(len(ds), s + 32))) if int(it["label"]) >= 0]
            if not items:
                continue
            with torch.no_grad():
                net(torch.stack([it["image"] for it in items]), heads=["cls"])
            skips, z = cap["out"]
            pooled = [*(k.mean(dim=(0, 3, 4)) for k in skips), z.mean(dim=(2, 3)), z.amax(dim=(2, 3))]
            rows.append(torch.cat(pooled, 1))
            labels += [int(it["label"]) for it in items]
    hook.remove()
    return torch.cat(rows).float(), torch.tensor(labels)


def auc(score: torch.Tensor, y: torch.Tensor) -> float:
    metric = ROCAUCMetric()
    metric(score, y)
    return float(metric.aggregate())


def logistic(xtr: torch.Tensor, ytr: torch.Tensor, xva: torch.Tensor, yva: torch.Tensor) -> float:
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[1], 1)
    opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-3)
    for _ in range(500):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(lin(xtr)[:, 0], ytr.float()).backward()
        opt.step()
    return auc(lin(xva)[:, 0].detach(), yva)


def spiking(head_cfg: HeadConfig, xtr, ytr, xva, yva, epochs: int = 20) -> list[float]:
    """Train a spiking cls head on the features (shown as a 1×1 map); validation AUC every 5 epochs."""
    torch.manual_seed(0)
    head = ClsHead(head_cfg, ModelConfig(t_steps=4), xtr.shape[1], [])
    t = head.t_steps
    opt = torch.optim.AdamW(head.parameters(), 2e-3, weight_decay=1e-4)
    out = []
    for ep in range(epochs):
        head.train()
        for j in torch.randperm(len(xtr)).split(8):
            if len(j) < 2:
                continue
            rates = head(xtr[j][:, :, None, None], [])
            functional.reset_net(head)
            loss = count_ce(rates, ytr[j], t) if head_cfg.rate_loss == "ce" else rate_mse(rates, ytr[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if ep % 5 == 4:
            head.eval()
            with torch.no_grad():
                rates = head(xva[:, :, None, None], [])
            functional.reset_net(head)
            out.append(round(auc(class_probabilities(rates)[:, 1], yva), 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--split", required=True, help="the split.json of the run that made the weights")
    ap.add_argument("--passes", type=int, default=3, help="augmented passes over the train part")
    args = ap.parse_args()
    net, ck = load_model(args.weights)
    net.eval()
    split = load_split(args.split)
    xtr, ytr = features(net, ck, split, "train", args.passes)
    xva, yva = features(net, ck, split, "val", 1)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    print(f"{len(xtr)} train rows, {len(xva)} val rows, {xtr.shape[1]} features")
    lr_auc = logistic((xtr - mu) / sd, ytr, (xva - mu) / sd, yva)
    print(f"logistic regression, all features: val AUC {lr_auc:.3f}")
    for t, loss, balanced in ((4, "mse", False), (16, "mse", True), (16, "ce", True)):
        cfg = HeadConfig(
            name="cls",
            type="cls",
            hidden=[256],
            population=10,
            t_steps=t,
            rate_loss=loss,
            balanced_init=balanced,
        )
        print(
            f"spiking head T={t} {loss} balanced={balanced}: val AUC every 5 epochs",
            spiking(cfg, xtr, ytr, xva, yva),
        )


if __name__ == "__main__":
    main()
