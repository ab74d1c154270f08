"""Typed configuration: nested dataclasses loaded from and saved to YAML.

Unknown keys are an error (a typo in a config must never be silently ignored), and every
size of the network lives here so that an experiment is one YAML file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

T = typing.TypeVar("T")


@dataclass
class NeuronConfig:
    """Activation of every hybrid layer: ``lif`` is the spiking network, ``relu`` with T = 1 its ANN twin."""

    kind: str = "lif"  # lif | relu
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float = 0.0  # hard reset to 0
    surrogate: str = "atan"  # any spikingjelly.activation_based.surrogate class name, case-insensitive
    surrogate_alpha: float = 2.0
    detach_reset: bool = False


@dataclass
class HeadConfig:
    """One task head. Adding a task is adding one of these to ``model.heads``."""

    name: str
    type: str  # cls | seg
    target: str | None = None  # seg: which mask of the data ("lung", "infection"); default = name
    weight: float = 1.0  # lambda_i of the weighted multi-loss (initial value when learned)
    # cls: N2 spiking FC layers = len(hidden) + 1 (the last has num_classes * population neurons)
    hidden: list[int] = field(default_factory=lambda: [128])
    num_classes: int = 2
    population: int = 1  # output neurons per class; the class rate is the population mean
    # cls: also read every encoder level's spike rate (global mean over T, H, W), not only the bottleneck.
    # Short paths for the surrogate gradient, like the seg skips (the deep-only head barely trains).
    pool_skips: bool = False
    # cls: how the bottleneck map becomes the FC input. 'mean' (global average) or 'meanmax' (average and
    # maximum side by side, twice the features): a focal lesion moves the maximum where the mean dilutes it.
    pool: str = "mean"
    # cls: the head's own time steps. Its input (pooled u(T)/T) is static, so it can be shown for longer
    # than the encoder's T at almost no cost (FC layers); finer rates, smoother surrogate gradients.
    t_steps: int | None = None  # None: the model's T
    # cls: 'mse' on rates (the patent) or 'ce', cross-entropy on spike counts (rate × T as logits)
    rate_loss: str = "mse"
    # cls: start every FC layer's BN bias at the firing threshold, so half the batch fires from step one
    # (threshold balancing). From BN's default bias 0 the LIF neurons start mostly silent and identical
    # across classes, and Adam needs epochs to move the bias into the range where rates carry the class.
    balanced_init: bool = False
    # cls: a private branch. The head reads encoder level `branch_from`'s spikes (0-based, pooled) through
    # its own copy of the deeper levels (2 hybrid convs each, same widths) instead of the shared bottleneck.
    # In the multi-task model the seg heads rewrite the shared deep levels for the full-field seg slices,
    # and the cls set's lung-window class features do not survive that (docs/experiments.md, twin probes).
    branch_from: int | None = None
    # seg: decoder widths from the deepest level to the shallowest (default: the encoder's, reversed)
    widths: list[int] | None = None
    skips: bool = True

    @property
    def mask(self) -> str:
        return self.target or self.name

    def time_steps(self, model_t: int) -> int:
        """The T this head runs for: its own if set (spiking cls head), else the model's; an ANN stays 1."""
        return self.t_steps if self.t_steps is not None and model_t > 1 else model_t


@dataclass
class ModelConfig:
    in_channels: int = 1
    image_size: int = 256
    t_steps: int = 4
    batch_norm: bool = True
    # none | equalize: replace intensities by their rank in the slice (model/equalize.py): invariant to
    # monotone contrast changes such as gamma or another HU window
    input_norm: str = "none"
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])  # N1 = len(widths)
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    heads: list[HeadConfig] = field(
        default_factory=lambda: [
            HeadConfig(name="cls", type="cls"),
            HeadConfig(name="lung", type="seg"),
            HeadConfig(name="infection", type="seg"),
        ]
    )

    @property
    def levels(self) -> int:
        return len(self.widths)


@dataclass
class LossConfig:
    weighting: str = "fixed"  # fixed | uncertainty
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    dice: bool = True  # add monai's Dice loss to the focal loss of every seg head
    firing_rate_l2: float = 0.0  # optional penalty on mean firing rate (energy trade-off)
    # Contrast consistency (AugMix-style): each training batch's segmentation slices run a second time
    # with their display contrast changed (intensity ** g, g log-uniform in consistency_gamma), and this
    # weight x the mean squared difference of the seg heads' probabilities between the two passes joins the
    # loss. Augmentation shows the model many contrasts; this asks for the same answer under all of them.
    # Costs a second forward and backward of those slices.
    consistency: float = 0.0
    consistency_gamma: tuple[float, float] = (0.67, 1.5)
    consistency_vflip: float = 0.0  # probability that the second pass also sees the slice upside down
    # cls (MSE): leave out of each batch's loss this fraction of its labelled cls slices with the highest
    # loss, among class cls_trim_label only if set (the small-loss trick against noisy slice labels)
    cls_trim: float = 0.0
    cls_trim_label: int | None = None


@dataclass
class AugmentConfig:
    enabled: bool = True
    hflip: float = 0.5
    vflip: float = 0.5
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.1
    clahe: float = 0.3  # probability of a CLAHE-like local equalisation
    noise_std: float = 0.02


@dataclass
class DataConfig:
    seg_roots: list[str] = field(default_factory=lambda: ["../shared/data/covid19-ct-seg-png"])
    cls_roots: list[str] = field(default_factory=lambda: ["../shared/data/sarscov2-ct"])
    nifti_roots: list[str] = field(default_factory=list)
    mask_dirs: dict[str, str] = field(default_factory=lambda: {"lung": "lungs", "infection": "covid"})
    # Seg-layout slices are all COVID-positive. Feeding them to the cls head teaches it "full field of view
    # means positive" (a source confound), so by default only the same-source cls set trains the cls head.
    seg_cls_labels: bool = False
    # Keep only these labels of the cls roots (None: all). [0] with seg_cls_labels gives the source-confounded
    # setup (positives from one dataset, negatives from another) that `spikect compare` measures.
    cls_labels: list[int] | None = None
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    train_only_groups: list[str] = field(default_factory=lambda: ["r*"])  # glob on seg volume ids
    test_groups: list[str] = field(default_factory=list)  # explicit overrides, e.g. ["c02", "c05"]
    val_groups: list[str] = field(default_factory=list)
    # K-fold validation over the groups that are neither test nor pinned nor train-only: with val_folds = k
    # they are dealt into k folds after the seeded shuffle, and fold val_fold is validation. Choices between
    # configs then rest on all k folds (one run per fold) rather than on one small draw
    # (docs/experiments.md, "Why the validation AUC sits near 0.80"). 0: off (val_fraction draws val).
    val_folds: int = 0
    val_fold: int = 0
    block_size: int = 50  # cls split: blocks of consecutive `number`s
    negative_fraction: float = 0.2  # per-epoch share of negatives drawn (patent: 20%)
    max_per_split: int | None = None  # cap per split and dataset, for tiny test configs
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Augmentation of the classification roots' slices (None: `augment`). The COVID / non-COVID cue in the
    # same-source set is largely lung brightness and texture, which strong intensity changes erase: with
    # gamma 0.5-2, CLAHE and brightness on, even the ANN twin does not fit the training slices
    # (docs/experiments.md, "Intensity augmentation and the classifier").
    cls_augment: AugmentConfig | None = None


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 8  # per process: under torchrun the global batch is batch_size x WORLD_SIZE
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 10  # epochs without validation improvement before stopping
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes per training process
    device: str = "cpu"  # cpu | cuda (under torchrun each process takes cuda:LOCAL_RANK)
    threads: int | None = None  # torch.set_num_threads; None keeps torch's default
    grad_clip: float = 5.0
    amp: str = "auto"  # auto (bf16 on a CUDA GPU that has it, else none) | bf16 (CUDA only) | none
    # ANN warm start: first train the network as its ANN twin (ReLU, T = 1) for this many epochs, convert it
    # (model/convert.py), then train the spiking network for `epochs`. Surrogate gradients through ten spiking
    # layers barely teach the encoder whole-slice class features; the twin learns them in an epoch, cheaply,
    # and they survive conversion. 0: the spiking network trains from scratch.
    ann_warmup_epochs: int = 0
    ann_warmup_lr: float | None = None  # None: train.lr
    convert_scale: float = 2.0  # BatchNorm affine x this at conversion (why: model/convert.py)
    convert_batches: int = 40  # training batches that re-estimate BatchNorm statistics in spiking mode
    # Start from these weights (a path or 'default'): every tensor whose name and shape match is loaded, the
    # rest stays freshly initialised, e.g. the encoder and cls head of a cls-only run. With a warm start the
    # twin starts from them. Ignored by --resume, which restores everything.
    init: str | None = None
    # Validate, keep and convert an exponential moving average of the weights (and BatchNorm statistics),
    # updated after every step with this decay (torch.optim.swa_utils), against the epoch-to-epoch swings of
    # the validation AUC. 0: off (v0.3). On the cls-only probe's 6 folds, 0.99 left the mean AUC where it
    # was and 0.995 lagged behind (docs/experiments.md, "Weight averaging").
    ema: float = 0.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


class ConfigError(ValueError):
    """A config file or dict that does not describe a valid spikect configuration."""


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def build_dataclass(cls: type[T], data: Any, where: str) -> T:
    """A dataclass from a YAML mapping, with the config's checks (unknown keys and wrong types are errors)."""
    return _build(cls, data, where)


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = _build(Config, data or {}, "config")
    validate(cfg)
    return cfg


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return config_from_dict(data)


def validate(cfg: Config) -> None:
    m = cfg.model
    if m.neuron.kind not in ("lif", "relu"):
        raise ConfigError(f"model.neuron.kind must be 'lif' or 'relu', got {m.neuron.kind!r}")
    if m.input_norm not in ("none", "equalize"):
        raise ConfigError(f"model.input_norm must be 'none' or 'equalize', got {m.input_norm!r}")
    if m.neuron.kind == "relu" and m.t_steps != 1:
        raise ConfigError("model.neuron.kind 'relu' is the ANN baseline: set model.t_steps to 1")
    if m.t_steps < 1:
        raise ConfigError("model.t_steps must be >= 1")
    if m.levels < 1:
        raise ConfigError("model.widths needs at least one level")
    if m.image_size % (2 ** (m.levels - 1)):
        raise ConfigError(
            f"model.image_size {m.image_size} must be divisible by 2**(levels-1) = {2 ** (m.levels - 1)}"
        )
    names = [h.name for h in m.heads]
    if len(set(names)) != len(names):
        raise ConfigError(f"model.heads: duplicate head names {names}")
    if not m.heads:
        raise ConfigError("model.heads: at least one head is needed")
    for h in m.heads:
        if h.type not in ("cls", "seg"):
            raise ConfigError(f"head {h.name!r}: type must be 'cls' or 'seg', got {h.type!r}")
        if h.pool not in ("mean", "meanmax"):
            raise ConfigError(f"head {h.name!r}: pool must be 'mean' or 'meanmax', got {h.pool!r}")
        if h.rate_loss not in ("mse", "ce"):
            raise ConfigError(f"head {h.name!r}: rate_loss must be 'mse' or 'ce', got {h.rate_loss!r}")
        if h.t_steps is not None and h.t_steps < 1:
            raise ConfigError(f"head {h.name!r}: t_steps must be >= 1")
        if h.branch_from is not None and (h.type != "cls" or not 0 <= h.branch_from <= m.levels - 2):
            raise ConfigError(
                f"head {h.name!r}: branch_from is for cls heads and must be an encoder level in "
                f"0..{m.levels - 2} (the branch copies the levels after it), got {h.branch_from!r}"
            )
        if h.type == "seg" and h.widths is not None and len(h.widths) != m.levels:
            raise ConfigError(f"head {h.name!r}: widths needs {m.levels} entries (one per level)")
    if cfg.train.ann_warmup_epochs < 0 or cfg.train.convert_batches < 1 or cfg.train.convert_scale <= 0:
        raise ConfigError("train: need ann_warmup_epochs >= 0, convert_batches >= 1 and convert_scale > 0")
    if cfg.train.ann_warmup_epochs and m.neuron.kind != "lif":
        raise ConfigError("train.ann_warmup_epochs warms up a spiking net: model.neuron.kind must be 'lif'")
    if cfg.train.amp not in ("auto", "bf16", "none"):
        raise ConfigError(f"train.amp must be 'auto', 'bf16' or 'none', got {cfg.train.amp!r}")
    lo, hi = cfg.loss.consistency_gamma
    if cfg.loss.consistency < 0 or not 0 < lo <= hi or not 0 <= cfg.loss.consistency_vflip <= 1:
        raise ConfigError(
            "loss: need consistency >= 0, 0 < consistency_gamma[0] <= consistency_gamma[1] "
            "and consistency_vflip in [0, 1]"
        )
    if not 0 <= cfg.loss.cls_trim < 1:
        raise ConfigError(f"loss.cls_trim must be in [0, 1), got {cfg.loss.cls_trim!r}")
    d = cfg.data
    if d.val_folds:
        if d.val_folds < 2 or not 0 <= d.val_fold < d.val_folds:
            raise ConfigError(
                "data: val_folds must be >= 2 and val_fold in 0..val_folds-1, "
                f"got {d.val_folds} / {d.val_fold}"
            )
        if d.val_groups:
            raise ConfigError("data: val_folds draws validation; leave val_groups empty (or val_folds 0)")
    elif d.val_fold:
        raise ConfigError("data.val_fold needs data.val_folds >= 2")
    if cfg.loss.weighting not in ("fixed", "uncertainty"):
        raise ConfigError(f"loss.weighting must be 'fixed' or 'uncertainty', got {cfg.loss.weighting!r}")
