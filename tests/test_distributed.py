"""Data-parallel training: sharded sampling, merged scores, lazy slice reading, and a real 2-process
``torchrun -m spikect train`` run on the CPU (gloo) compared with one process at the same global batch."""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from nibabel import arrayproxy
from PIL import Image

from spikect.checkpoint import load_checkpoint
from spikect.config import DataConfig, load_config
from spikect.data import EpochSampler, SliceDataset, list_records
from spikect.distributed import SINGLE, Dist, session, state_digest
from spikect.metrics import VolumeOverlap
from spikect.train import Tally, amp_dtype, gather_tally, train
from tests.conftest import REPO, shared

# --- sampler -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_epoch_sampler_shards_are_the_global_batches(world: int, drop_last: bool) -> None:
    labels = np.array([1] * 7 + [-1] * 6 + [0] * 40)  # 13 kept + 8 negatives = 21 per epoch
    full = EpochSampler(labels, 0.2, seed=5)
    full.set_epoch(3)
    order = full.epoch_indices()
    shards = []
    for rank in range(world):
        s = EpochSampler(labels, 0.2, seed=5, num_replicas=world, rank=rank, drop_last=drop_last)
        s.set_epoch(3)
        shards.append(list(s))
        assert len(shards[-1]) == len(s)
    assert len({len(s) for s in shards}) == 1  # DDP needs equal step counts
    n = len(shards[0])
    assert n == (21 // world if drop_last else -(-21 // world))
    # position i of rank r is element i * world + r of the (padded or cut) single-process list
    interleaved = [shards[r][i] for i in range(n) for r in range(world)]
    expected = np.resize(order, n * world) if not drop_last else order[: n * world]
    assert interleaved == expected.tolist()
    if world == 1:
        assert shards[0] == list(full)  # the single-process order, unchanged
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(labels, 0.2, num_replicas=2, rank=2)


# --- merged validation scores ---------------------------------------------------------------------------


def test_tallies_merge_to_the_single_process_scores() -> None:
    rng = np.random.default_rng(0)
    slices = [(f"v{i % 3}", rng.random((8, 8)) > 0.5, rng.random((8, 8)) > 0.4) for i in range(9)]
    whole, parts = VolumeOverlap(), [VolumeOverlap(), VolumeOverlap()]
    for i, (vid, p, t) in enumerate(slices):
        whole.update(vid, p, t)
        parts[i % 2].update(vid, p, t)  # volumes split between two ranks
    tallies = [Tally(overlaps={"lung": acc}) for acc in parts]
    probs = rng.random(10)
    labels = (rng.random(10) > 0.5).astype(np.int64)
    for k, tally in enumerate(tallies):
        tally.probs.append(probs[k::2])
        tally.labels.append(labels[k::2])
        tally.sums, tally.counts = {"total": 1.0 + k}, {"total": 2}
    merged = Tally()
    for tally in tallies:
        merged.merge(tally)
    result = merged.result(scored=True)
    assert result.metrics["lung_dice"] == pytest.approx(whole.dice())
    assert result.losses["total"] == pytest.approx(3.0 / 4)
    single = Tally(overlaps={"lung": whole}, probs=[probs], labels=[labels]).result(scored=True)
    assert result.metrics["auc"] == pytest.approx(single.metrics["auc"])
    assert gather_tally(tallies[0], SINGLE) is tallies[0]  # one process: nothing is gathered


def test_single_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with session("cpu") as (env, device):
        assert env == Dist() and not env.enabled and env.is_main and device == torch.device("cpu")
        assert not torch.distributed.is_initialized()
    assert amp_dtype("auto", device) is None and amp_dtype("none", device) is None
    with pytest.raises(ValueError, match="CUDA"):
        amp_dtype("bf16", device)
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    b.load_state_dict(a.state_dict())
    assert state_digest([a]) == state_digest([b])
    with torch.no_grad():
        b.bias[0] = torch.nextafter(b.bias[0], torch.tensor(1.0))  # one ulp
    assert state_digest([a]) != state_digest([b])


# --- lazy reading ---------------------------------------------------------------------------------------

DEPTH, SIDE = 6, 16


def _nifti_root(root: Path) -> Path:
    for d in ("ct_scans", "lung_mask"):
        (root / d).mkdir(parents=True)
    hu = np.full((SIDE, SIDE, DEPTH), -1000, dtype=np.int16)
    hu[4:12, 4:12] = -600
    for name in ("a.nii", "b.nii.gz"):  # in place, and through the gzip stream
        nib.save(nib.Nifti1Image(hu, np.eye(4)), root / "ct_scans" / name)
        nib.save(nib.Nifti1Image((hu > -700).astype(np.uint8), np.eye(4)), root / "lung_mask" / name)
    return root


def _seg_root(root: Path) -> Path:
    for d in ("ct", "lungs"):
        (root / d).mkdir(parents=True)
    rows = ["file,volume"]
    for i in range(3):
        Image.fromarray(np.full((SIDE, SIDE), 40 * i, np.uint8)).save(root / "ct" / f"s{i}.png")
        Image.fromarray(np.eye(SIDE, dtype=np.uint8) * 255).save(root / "lungs" / f"s{i}.png")
        rows.append(f"s{i}.png,v0")
    (root / "slices.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("layout", ["nifti", "seg"])
def test_samples_read_one_slice_and_scan_no_folder(
    layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker reads exactly the slice it serves (NIfTI through the array proxy, never the volume) and
    lists no folder per sample: the records were listed once, when the dataset was built."""
    root = _nifti_root(tmp_path / "n") if layout == "nifti" else _seg_root(tmp_path / "s")
    cfg = DataConfig(seg_roots=[], cls_roots=[], mask_dirs={"lung": "lungs"})
    ds = SliceDataset(root, list_records(root, cfg, layout), SIDE, ["lung"], layout)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a folder was listed, or a whole volume was read, while loading a sample")

    reads: list[int] = []
    real_getitem = arrayproxy.ArrayProxy.__getitem__

    def one_read(self: arrayproxy.ArrayProxy, slicer: object) -> np.ndarray:
        out = real_getitem(self, slicer)
        reads.append(out.size)
        return out

    monkeypatch.setattr(arrayproxy.ArrayProxy, "__getitem__", one_read)
    for name in ("__array__", "get_unscaled"):
        monkeypatch.setattr(arrayproxy.ArrayProxy, name, refuse)
    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", refuse)
    for obj, name in ((Path, "iterdir"), (Path, "glob"), (os, "listdir"), (os, "scandir"), (glob, "glob")):
        monkeypatch.setattr(obj, name, refuse)
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["has_lung"]
    if layout == "nifti":
        assert len(ds) == 2 * DEPTH
        assert reads and all(n == SIDE * SIDE for n in reads)  # image + mask, one slice each


# --- the real command, two processes --------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _config(tmp_path: Path, name: str, **train: object) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["data"]["seg_roots"] = [str(shared("covid19-ct-seg-png"))]
    cfg["data"]["cls_roots"] = [str(shared("sarscov2-ct"))]
    cfg["data"]["augment"] = {"enabled": False}  # augmentation draws differ between ranks by design
    cfg["loss"]["weighting"] = "uncertainty"  # learned loss weights must be averaged like the network's
    cfg["train"].update({"threads": 1, **train})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "spikect", "train", "--no-progress", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("best checkpoint:") == 1, proc.stdout  # rank 0 alone prints


_EXIT = (
    "import atexit, sys\n"
    "from spikect.distributed import exit_process\n"
    "atexit.register(lambda: print('teardown'))\n"
    "print('done', end='')\n"  # left in the buffer: exit_process must flush it
    "sys.stderr.write('err')\n"
    "exit_process(3)\n"
)


@pytest.mark.parametrize("world", ["1", "2"])
def test_exit_process_skips_the_teardown_of_torchrun_workers_only(world: str) -> None:
    # gloo's threads can abort a finished rank during interpreter teardown, so a worker leaves with os._exit
    env = {**os.environ, "WORLD_SIZE": world}
    proc = subprocess.run([sys.executable, "-c", _EXIT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert proc.stderr.endswith("err")
    assert proc.stdout == ("done" if world == "2" else "doneteardown\n")


# 2 processes x batch 2 against 1 process x batch 4: the same 4 global steps on the same slices. They
# differ because each rank normalises with BatchNorm statistics of its own 2 slices and averages its loss
# over its own slices (per-rank Dice, per-rank means over the slices that have each target). Measured on the
# tiny config after one epoch: the seg heads' training and validation losses within 0.1 %, the learned loss
# weights within 0.04 %; RTOL leaves a 10x margin. Not compared: the cls head's rate MSE (with T = 2 a rate
# is 0, 1/2 or 1, so one spike flipped by a tiny difference moves a batch's loss by a step: measured 0.469
# vs 0.500 in training, equal in validation), and the summed totals (a batch's total adds only the heads
# that have targets in it, so it depends on how slices are grouped, 2 or 4 at a time).
RTOL = 1e-2


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    # 2 epochs with patience 0 stop after the first, and leave a checkpoint to resume for the second
    one = _config(tmp_path, "one", batch_size=4, epochs=2, patience=0)
    two = _config(tmp_path, "two", batch_size=2, epochs=2, patience=0)
    _torchrun("--config", str(two), "--out", str(tmp_path / "ddp"))
    train(load_config(one), tmp_path / "ref", progress=False)

    ddp, ref = _rows(tmp_path / "ddp" / "log.csv"), _rows(tmp_path / "ref" / "log.csv")
    assert [r["epoch"] for r in ddp] == [r["epoch"] for r in ref] == ["0"]
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.safetensors")
    digests = ckpt.meta["replica_digests"]
    assert ckpt.meta["world_size"] == 2 and len(digests) == 2
    assert digests[0] == digests[1]  # both ranks' weights, BatchNorm buffers and loss weights, bit for bit
    assert digests[0] == state_digest([_objective(ckpt)])  # ... and they are what rank 0 saved
    seg_losses = [f"{part}_{head}" for part in ("train", "val") for head in ("lung", "infection")]
    for key in [*seg_losses, "lambda_cls", "lambda_lung", "lambda_infection"]:
        assert float(ddp[0][key]) == pytest.approx(float(ref[0][key]), rel=RTOL), key
    for name in ("split.json", "config.yaml", "loss.png", "best.safetensors"):
        assert (tmp_path / "ddp" / name).is_file(), name

    # resume the 2-process run for its second epoch: bit-identical to an uninterrupted 2-process run
    _torchrun("--resume", str(tmp_path / "ddp" / "last.safetensors"), "--out", str(tmp_path / "ddp"))
    straight = _config(tmp_path, "straight", batch_size=2, epochs=2, patience=100)
    _torchrun("--config", str(straight), "--out", str(tmp_path / "straight"))
    resumed, uninterrupted = _rows(tmp_path / "ddp" / "log.csv"), _rows(tmp_path / "straight" / "log.csv")
    assert [r["epoch"] for r in resumed] == ["0", "1"]
    for a, b in zip(resumed, uninterrupted, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    last = load_checkpoint(tmp_path / "ddp" / "last.safetensors").meta["replica_digests"]
    assert last == load_checkpoint(tmp_path / "straight" / "last.safetensors").meta["replica_digests"]


def _objective(ckpt: object) -> torch.nn.Module:
    """The module whose digest the replicas compare (network + loss), rebuilt from a checkpoint."""
    from spikect.losses import MultiTaskLoss
    from spikect.model.network import MultiTaskNet
    from spikect.train import Objective

    model = MultiTaskNet(ckpt.config.model)
    model.load_state_dict(ckpt.model)
    loss_fn = MultiTaskLoss(ckpt.config.model.heads, ckpt.config.loss, ckpt.config.model.t_steps)
    loss_fn.load_state_dict(ckpt.loss)
    return Objective(model, loss_fn)
