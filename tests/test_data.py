"""Datasets, splits, sampler and augmentation: on the real shared data (skipped when absent) and on
tiny NIfTI volumes written here."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from spikect.config import AugmentConfig, DataConfig
from spikect.data import (
    Augmenter,
    EpochSampler,
    SliceDataset,
    build_dataset,
    clahe,
    dataset_labels,
    detect_layout,
    list_records,
    load_split,
    make_splits,
    normalise_stem,
    save_split,
)
from spikect.data.splits import assign_groups
from spikect.preprocess import LUNG_WINDOW

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SEG = DATA / "covid19-ct-seg-png"
CLS = DATA / "sarscov2-ct"
MASKS = ["lung", "infection"]


@pytest.fixture(scope="module")
def real() -> DataConfig:
    if not (SEG / "slices.csv").is_file() or not (CLS / "images.csv").is_file():
        pytest.skip(f"real data not found under {DATA} (../shared/data relative to the repo root)")
    return DataConfig(seg_roots=[str(SEG)], cls_roots=[str(CLS)])


def check_sample(sample: dict, size: int) -> None:
    keys = {"image", "label", "group", "id", "orig_size"} | {k for m in MASKS for k in (m, f"has_{m}")}
    assert set(sample) == keys
    image = sample["image"]
    assert image.shape == (1, size, size) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert sample["label"].dtype == torch.long and sample["label"].dim() == 0
    assert sample["label"].item() in (-1, 0, 1)
    for m in MASKS:
        mask, has = sample[m], sample[f"has_{m}"]
        assert mask.shape == (1, size, size) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert has.dtype == torch.bool and has.dim() == 0
        if not has:
            assert not mask.any()
    assert isinstance(sample["group"], str) and isinstance(sample["id"], str)
    assert sample["orig_size"].dtype == torch.long and sample["orig_size"].shape == (2,)


# ---------------------------------------------------------------------------------------------- real data


def test_detect_layout(real: DataConfig, tmp_path: Path) -> None:
    assert detect_layout(SEG) == "seg"
    assert detect_layout(CLS) == "cls"
    with pytest.raises(ValueError, match=r"'seg'.*'cls'.*'nifti'"):
        detect_layout(tmp_path)
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "missing")


@pytest.mark.parametrize("seg_cls_labels", [False, True])
def test_seg_samples(real: DataConfig, seg_cls_labels: bool) -> None:
    cfg = dataclasses.replace(real, seg_cls_labels=seg_cls_labels)
    records = list_records(SEG, cfg)
    assert len(records) == 1337
    ds = SliceDataset(SEG, records[::300], 128, MASKS, "seg")
    assert (ds.labels == (1 if seg_cls_labels else -1)).all()
    for i in range(len(ds)):
        s = ds[i]
        check_sample(s, 128)
        assert s["has_lung"] and s["has_infection"]
        assert s["lung"].sum() > 0 and s["infection"].sum() > 0  # every slice of this set has infection
        assert s["orig_size"].tolist() == [256, 256]
        assert s["id"].startswith("covid19-ct-seg-png/") and s["group"][0] in "cr"


def test_cls_samples(real: DataConfig) -> None:
    records = list_records(CLS, real)
    assert {r.label for r in records} == {0, 1}
    picked = [r for r in records if r.label == 0][:2] + [r for r in records if r.label == 1][:2]
    ds = SliceDataset(CLS, picked, 64, MASKS, "cls")
    for i, r in enumerate(picked):
        s = ds[i]
        check_sample(s, 64)
        assert not s["has_lung"] and not s["has_infection"]
        assert s["label"].item() == (1 if r.image.startswith("COVID/") else 0)
        w, h = Image.open(CLS / r.image).size
        assert s["orig_size"].tolist() == [h, w]
        assert s["group"].split(":")[0] == ("COVID" if r.label else "NonCOVID")


def _part_of(split, root: str) -> dict[str, str]:
    d = split.dataset(root)
    return {i: p for p, ids in d.ids.items() for i in ids}


def test_seg_split_by_volume(real: DataConfig) -> None:
    split = make_splits(real)
    d = split.dataset(str(SEG))
    records = list_records(SEG, real)
    part_of = _part_of(split, str(SEG))
    assert len(part_of) == len(records)  # every slice in exactly one part
    parts_of_volume: dict[str, set[str]] = {}
    for r in records:
        parts_of_volume.setdefault(r.group, set()).add(part_of[r.id])
    assert all(len(p) == 1 for p in parts_of_volume.values()), parts_of_volume
    assert all(p == {"train"} for v, p in parts_of_volume.items() if v.startswith("r"))
    assert d.groups["val"] and d.groups["test"]
    assert len(d.ids["test"]) >= 0.15 * len(records) and len(d.ids["val"]) >= 0.15 * len(records)


def test_cls_split_by_block_and_stratified(real: DataConfig) -> None:
    split = make_splits(real)
    records = list_records(CLS, real)
    part_of = _part_of(split, str(CLS))
    parts_of_block: dict[str, set[str]] = {}
    for r in records:
        parts_of_block.setdefault(r.group, set()).add(part_of[r.id])
        start = r.number // 50 * 50
        assert r.group == f"{'COVID' if r.label else 'NonCOVID'}:{start:04d}-{start + 49:04d}"
    assert all(len(p) == 1 for p in parts_of_block.values())
    for part in ("train", "val", "test"):
        labels = {r.label for r in records if part_of[r.id] == part}
        assert labels == {0, 1}, part


def test_split_reproducible_and_seeded(real: DataConfig, tmp_path: Path) -> None:
    a, b = make_splits(real), make_splits(real)
    assert a.to_dict() == b.to_dict()
    other = make_splits(dataclasses.replace(real, seed=1))
    assert other.dataset(str(SEG)).groups != a.dataset(str(SEG)).groups
    assert other.dataset(str(CLS)).groups != a.dataset(str(CLS)).groups
    save_split(a, tmp_path / "split.json")
    loaded = load_split(tmp_path / "split.json")
    assert loaded.to_dict() == a.to_dict() and loaded.seed == 0


def test_explicit_groups_and_typos(real: DataConfig) -> None:
    split = make_splits(dataclasses.replace(real, test_groups=["c02", "c05"], val_groups=["c03"]))
    seg = split.dataset(str(SEG))
    assert seg.groups["test"] == ["c02", "c05"] and seg.groups["val"] == ["c03"]
    assert split.dataset(str(CLS)).groups["test"]  # the seg override leaves the cls split automatic
    with pytest.raises(ValueError, match="match no group"):
        make_splits(dataclasses.replace(real, test_groups=["c99"]))


def test_val_folds_validate_every_non_test_group_once(real: DataConfig) -> None:
    base = make_splits(real)
    folds = [make_splits(dataclasses.replace(real, val_folds=3, val_fold=i)) for i in range(3)]
    for root in (str(SEG), str(CLS)):
        tests = {tuple(f.dataset(root).groups["test"]) for f in folds}
        assert tests == {tuple(base.dataset(root).groups["test"])}  # folds leave the test draw alone
        vals = [g for f in folds for g in f.dataset(root).groups["val"]]
        assert len(vals) == len(set(vals))  # no group validates twice
        for f in folds:
            d = f.dataset(root)
            assert not set(d.groups["val"]) & set(d.groups["train"])
            # the folds' val parts tile every group that is neither test nor train-only
            free = set(d.groups["val"]) | {g for g in d.groups["train"] if not g.startswith("r")}
            assert free == set(vals)
    for f in folds:  # stratified: each fold validates on both classes
        labels = {g.split(":")[0] for g in f.dataset(str(CLS)).groups["val"]}
        assert labels == {"COVID", "NonCOVID"}
    seg_vals = {g for f in folds for g in f.dataset(str(SEG)).groups["val"]}
    assert not any(g.startswith("r") for g in seg_vals)  # train-only groups never validate


def test_val_folds_config_errors(tmp_path: Path) -> None:
    from spikect.config import ConfigError, load_config

    for bad in (
        "val_folds: 1",
        "val_folds: 3\n  val_fold: 3",
        "val_fold: 1",
        "val_folds: 3\n  val_groups: [c01]",
    ):
        path = tmp_path / "c.yaml"
        path.write_text("data:\n  " + bad + "\n")
        with pytest.raises(ConfigError, match="val_fold"):
            load_config(path)


def test_max_per_split_and_build_dataset(real: DataConfig) -> None:
    cfg = dataclasses.replace(real, max_per_split=6)
    split = make_splits(cfg)
    assert split.to_dict() == make_splits(cfg).to_dict()
    for d in split.datasets:
        assert all(len(ids) == 6 for ids in d.ids.values())
    assert {r.split(":")[0] for r in split.dataset(str(CLS)).groups["train"]} == {"COVID", "NonCOVID"}
    train = build_dataset(cfg, split, "train", 64, augment=True)
    assert len(train) == 12
    assert train.ids == split.dataset(str(SEG)).ids["train"] + split.dataset(str(CLS)).ids["train"]
    assert sorted(set(train.labels.tolist())) == [-1, 0, 1]
    check_sample(train[0], 64)
    check_sample(train[11], 64)
    with pytest.raises(ValueError, match="part"):
        build_dataset(cfg, split, "dev", 64)


def test_cls_augment_replaces_augment_for_the_cls_roots_only(real: DataConfig) -> None:
    cfg = dataclasses.replace(real, max_per_split=2)
    split = make_splits(cfg)
    same = build_dataset(cfg, split, "train", 64, augment=True)
    assert [d.augment.cfg for d in same.datasets] == [cfg.augment, cfg.augment]
    mild = dataclasses.replace(cfg.augment, gamma=(0.9, 1.1), clahe=0.0)
    both = build_dataset(dataclasses.replace(cfg, cls_augment=mild), split, "train", 64, augment=True)
    by_layout = {d.layout: d.augment for d in both.datasets}
    assert by_layout["seg"].cfg == cfg.augment and by_layout["cls"].cfg == mild
    off = dataclasses.replace(cfg.augment, enabled=False)
    no_cls = build_dataset(dataclasses.replace(cfg, cls_augment=off), split, "train", 64, augment=True)
    assert {d.layout: d.augment is None for d in no_cls.datasets} == {"seg": False, "cls": True}
    assert all(d.augment is None for d in build_dataset(cfg, split, "val", 64).datasets)


def test_sampler_on_real_labels_without_decoding(real: DataConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    split = make_splits(real)
    train = build_dataset(real, split, "train", 256)
    monkeypatch.setattr(SliceDataset, "load", lambda *a: pytest.fail("labels must not decode images"))
    sampler = EpochSampler.from_dataset(train, real.negative_fraction, seed=real.seed)
    labels = train.labels
    assert len(sampler) == (labels != 0).sum() + round(0.2 * (labels == 0).sum())
    np.testing.assert_array_equal(dataset_labels(Subset(train, [0, len(train) - 1])), labels[[0, -1]])


# ------------------------------------------------------------------------------------------------ splits


def test_assign_groups_keeps_one_group_per_part() -> None:
    import random

    parts = assign_groups({"a": 100, "b": 100, "c": 100}, random.Random(0), 0.9, 0.9)
    assert all(len(parts[p]) == 1 for p in ("train", "val", "test"))
    parts = assign_groups({"a": 5, "b": 5, "r1": 50}, random.Random(0), 0.5, 0.5, train_only=["r*"])
    assert parts["train"] == ["r1"] and len(parts["val"]) == len(parts["test"]) == 1
    parts = assign_groups({"a": 5, "b": 5, "c": 5}, random.Random(0), 0.0, 0.0)
    assert parts["train"] == ["a", "b", "c"]


# ------------------------------------------------------------------------------------------------ sampler


def test_sampler_positives_fraction_and_epochs() -> None:
    labels = np.array([1] * 30 + [-1] * 10 + [0] * 500)
    np.random.default_rng(0).shuffle(labels)
    sampler = EpochSampler(labels, 0.2, seed=3)
    keep = set(np.flatnonzero(labels != 0).tolist())
    draws = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        idx = list(sampler)
        assert len(idx) == len(set(idx)) == len(sampler) == 40 + 100
        assert keep <= set(idx)
        assert sum(labels[i] == 0 for i in idx) == 100
        draws.append(idx)
    assert draws[0] != draws[1] and set(draws[0]) != set(draws[1])
    sampler.set_epoch(1)
    assert list(sampler) == draws[1]  # same epoch, same draw
    assert list(EpochSampler(labels, 0.2, seed=4)) != draws[0]
    assert len(EpochSampler(labels, 0.0)) == 40 and len(EpochSampler(labels, 1.0)) == 540
    with pytest.raises(ValueError):
        EpochSampler(labels, 1.5)


# ----------------------------------------------------------------------------------------------- augment

STILL = AugmentConfig(
    hflip=0.0,
    vflip=0.0,
    rotate_deg=0.0,
    scale=(1.0, 1.0),
    gamma=(1.0, 1.0),
    contrast=(1.0, 1.0),
    brightness=0.0,
    clahe=0.0,
    noise_std=0.0,
)


def _blob(size: int = 64) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    mask = torch.zeros(1, size, size)
    mask[0, 5:15, 8:30] = 1.0  # an asymmetric blob near the top-left corner
    mask[0, 15:25, 8:12] = 1.0
    return mask.clone() * 0.8, {"lung": mask, "infection": torch.zeros(1, size, size)}


def test_augment_flips_move_mask_with_image() -> None:
    image, masks = _blob()
    out, m = Augmenter(dataclasses.replace(STILL, hflip=1.0))(image, masks, torch.Generator().manual_seed(0))
    assert m["lung"][0, 5:15, 64 - 30 : 64 - 8].all() and m["lung"].sum() == masks["lung"].sum()
    torch.testing.assert_close(out, m["lung"] * 0.8)
    out, m = Augmenter(dataclasses.replace(STILL, vflip=1.0))(image, masks, torch.Generator().manual_seed(0))
    assert m["lung"][0, 64 - 15 : 64 - 5, 8:30].all()
    torch.testing.assert_close(out, m["lung"] * 0.8)


def test_augment_rotation_scale_keeps_masks_binary_and_aligned() -> None:
    image, masks = _blob()
    aug = Augmenter(dataclasses.replace(STILL, rotate_deg=25.0, scale=(0.8, 1.25)))
    g = torch.Generator().manual_seed(1)
    moved = 0
    for _ in range(10):
        out, m = aug(image, masks, g)
        assert set(m["lung"].unique().tolist()) <= {0.0, 1.0} and not m["infection"].any()
        agree = ((out > 0.4) == (m["lung"] > 0)).float().mean()
        assert agree > 0.98
        moved += int(not torch.equal(m["lung"], masks["lung"]))
    assert moved == 10


def test_augment_default_is_seeded_bounded_and_fast() -> None:
    image = torch.rand(1, 256, 256) * 0.5 + 0.25
    masks = {"lung": (image > 0.5).float(), "infection": (image > 0.7).float()}
    aug = Augmenter(AugmentConfig())
    a = aug(image, masks, torch.Generator().manual_seed(7))
    b = aug(image, masks, torch.Generator().manual_seed(7))
    c = aug(image, masks, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a[0], b[0])
    assert not torch.equal(a[0], c[0])
    g = torch.Generator().manual_seed(0)
    cpu = 0.0
    for _ in range(20):
        start = time.thread_time()  # CPU time of this thread: wall time on a shared CPU times the neighbours
        out, m = aug(image, masks, g)
        cpu += time.thread_time() - start
        assert out.dtype == torch.float32 and out.min() >= 0.0 and out.max() <= 1.0
        assert all(set(v.unique().tolist()) <= {0.0, 1.0} for v in m.values())
    assert cpu / 20 < 0.05  # a few ms each; a loose bound
    off = Augmenter(dataclasses.replace(AugmentConfig(), enabled=False))(image, masks)
    assert off[0] is image and off[1]["lung"] is masks["lung"]


def test_clahe_raises_local_contrast() -> None:
    y, x = torch.meshgrid(torch.linspace(0, 1, 128), torch.linspace(0, 1, 128), indexing="ij")
    flat = 0.45 + 0.1 * (torch.sin(20 * x) * torch.cos(15 * y))[None]  # low-contrast texture
    out = clahe(flat)
    assert out.shape == flat.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 2 * flat.std()
    assert clahe(torch.full((1, 64, 64), 0.3)).std() < 1e-6  # a constant stays constant


# ------------------------------------------------------------------------------------------------- NIfTI

SIDE, DEPTH = 32, 6
RADIOPAEDIA = "radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm"


def _ras_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, lung (labels 1/2) and infection arrays indexed [x, y, z] in RAS+ (x to the patient's right)."""
    hu = np.full((SIDE, SIDE, DEPTH), -1000, dtype=np.int16)
    lung = np.zeros(hu.shape, dtype=np.uint8)
    hu[22:29, 24:31, 1:5] = -600  # right, anterior
    lung[22:29, 24:31, 1:5] = 1
    lung[3:8, 10:20, 1:5] = 2  # left, posterior
    hu[3:8, 10:20, 1:5] = 150
    infection = np.zeros(hu.shape, dtype=np.uint8)
    infection[24:27, 26:29, 2:4] = 1
    return hu, lung, infection


@pytest.fixture(scope="module")
def nifti_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zenodo")
    for d in ("ct_scans", "lung_mask", "infection_mask"):
        (root / d).mkdir()
    hu, lung, infection = _ras_volume()
    ras = np.eye(4)

    def save(arr: np.ndarray, affine: np.ndarray, rel: str) -> None:
        nib.save(nib.Nifti1Image(arr, affine), root / rel)

    # 1: RAS, lung labels 1/2, mismatched names.
    save(hu, ras, "ct_scans/coronacases_org_001.nii")
    save(lung, ras, "lung_mask/coronacases_001.nii")
    save(infection, ras, "infection_mask/coronacases_001.nii")
    # 2: the same anatomy stored LPS (x towards the left, y towards posterior), no infection mask.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    save(hu[::-1, ::-1].copy(), lps, "ct_scans/coronacases_org_002.nii.gz")
    save(lung[::-1, ::-1].copy(), lps, "lung_mask/coronacases_002.nii.gz")
    # 3: the same anatomy stored [y, x, z] as float, lung mask 0/255, Zenodo's Radiopaedia names.
    swap = np.array([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    t = (1, 0, 2)
    save(hu.transpose(t).astype(np.float32), swap, f"ct_scans/{RADIOPAEDIA}.nii.gz")
    save((lung.transpose(t) > 0).astype(np.uint8) * 255, swap, "lung_mask/radiopaedia_4_85506_1.nii.gz")
    save(infection.transpose(t), swap, "infection_mask/radiopaedia_4_85506_1.nii.gz")
    return root


def test_normalise_stem_matches_zenodo_names() -> None:
    assert normalise_stem("coronacases_org_001.nii") == normalise_stem("coronacases_001.nii.gz")
    assert normalise_stem("radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii") == normalise_stem(
        "radiopaedia_4_85506_1.nii"
    )
    assert normalise_stem("coronacases_org_001.nii") != normalise_stem("coronacases_org_010.nii")


def test_nifti_records_and_samples(nifti_root: Path) -> None:
    assert detect_layout(nifti_root) == "nifti"
    cfg = DataConfig(seg_roots=[], cls_roots=[], nifti_roots=[str(nifti_root)])
    records = list_records(nifti_root, cfg)
    assert len(records) == 3 * DEPTH and len({r.id for r in records}) == 3 * DEPTH
    groups = {r.group for r in records}
    assert groups == {"coronacases_org_001", "coronacases_org_002", RADIOPAEDIA}
    assert all(r.label == -1 for r in records)
    has_inf = {r.group: "infection" in r.masks for r in records}
    assert has_inf == {"coronacases_org_001": True, "coronacases_org_002": False, RADIOPAEDIA: True}
    ds = SliceDataset(nifti_root, records, SIDE, MASKS, "nifti")
    z = 2
    samples = [ds[i * DEPTH + z] for i in range(3)]
    for s in samples:
        check_sample(s, SIDE)
        assert s["orig_size"].tolist() == [SIDE, SIDE] and s["has_lung"]
    # Radiological orientation: the right-anterior blob (HU -600) is top-left, the left-posterior
    # one (HU 150 -> 1.0) bottom-right; row = 31 - y, column = 31 - x.
    img, lung = samples[0]["image"][0], samples[0]["lung"][0]
    low, high = LUNG_WINDOW
    assert torch.allclose(img[1:8, 3:10], torch.tensor((-600 - low) / (high - low)))
    assert torch.all(img[12:22, 24:29] == 1.0)
    assert img[20, 5] == pytest.approx((-1000 - low) / (high - low))  # air
    assert lung.sum() == 7 * 7 + 5 * 10  # labels 1 and 2 both binarised
    assert samples[0]["infection"][0, 3:6, 5:8].all() and samples[0]["infection"].sum() == 9
    for s in samples[1:]:  # LPS and [y, x] storage show the same picture
        torch.testing.assert_close(s["image"], samples[0]["image"])
        torch.testing.assert_close(s["lung"], samples[0]["lung"])
    assert not samples[1]["has_infection"] and samples[2]["has_infection"]
    torch.testing.assert_close(samples[2]["infection"], samples[0]["infection"])
    assert not ds[0]["lung"].any()  # slice 0 is empty


def test_nifti_split_and_build(nifti_root: Path) -> None:
    cfg = DataConfig(seg_roots=[], cls_roots=[], nifti_roots=[str(nifti_root)])
    split = make_splits(cfg)
    d = split.datasets[0]
    assert d.layout == "nifti"
    volumes = {r.group for r in list_records(nifti_root, cfg)}
    assert sorted(g for gs in d.groups.values() for g in gs) == sorted(volumes)
    assert all(len(gs) == 1 for gs in d.groups.values())  # 3 volumes: one whole volume per part
    test = build_dataset(cfg, split, "test", 64, augment=True)
    assert len(test) == DEPTH and len(set(test.groups)) == 1
    check_sample(test[3], 64)


PROBE_TEST = [
    "COVID:0250-0299",
    "COVID:0500-0549",
    "COVID:0800-0849",
    "NonCOVID:0300-0349",
    "NonCOVID:0850-0899",
    "NonCOVID:0900-0949",
]


def test_any_spelling_of_a_root_draws_the_same_groups(real: DataConfig, tmp_path: Path) -> None:
    """The draw is seeded by the folder, not its spelling: absolute, relative to the repo, or via a link."""
    rel = os.path.relpath(CLS, REPO)
    link = tmp_path / "elsewhere"
    link.mkdir()
    (link / CLS.name).symlink_to(CLS)
    spellings = [str(CLS), rel, str(link / CLS.name), f"{CLS}/"]
    draws = []
    for root in spellings:
        cfg = DataConfig(seg_roots=[], cls_roots=[root], test_groups=PROBE_TEST, val_folds=6, val_fold=4)
        draws.append(make_splits(cfg, base=REPO).datasets[0].groups)
    assert all(d == draws[0] for d in draws), spellings
    # ...and still the relative spelling's draw: configs/cls-probe.yaml's fold 4 (docs/experiments.md)
    assert draws[0]["val"] == [
        "COVID:0050-0099",
        "COVID:0650-0699",
        "COVID:0850-0899",
        "NonCOVID:0200-0249",
        "NonCOVID:0250-0299",
        "NonCOVID:1000-1049",
    ]
