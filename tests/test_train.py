"""End to end on a few real slices: train the tiny config, resume it, evaluate it."""

import csv
import json
import math

import pytest
import torch

from spikect.cli import main
from spikect.config import load_config
from spikect.train import train
from tests.conftest import REPO, shared


@pytest.fixture(scope="module")
def tiny_cfg():
    shared("covid19-ct-seg-png")
    shared("sarscov2-ct")
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    for i, root in enumerate(cfg.data.seg_roots):
        cfg.data.seg_roots[i] = str((REPO / root).resolve())
    for i, root in enumerate(cfg.data.cls_roots):
        cfg.data.cls_roots[i] = str((REPO / root).resolve())
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tiny_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    train(tiny_cfg, out, progress=False)
    return out


def _log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_training_writes_everything(tiny_run):
    for name in ("best.safetensors", "last.safetensors", "log.csv", "loss.png", "split.json", "config.yaml"):
        assert (tiny_run / name).is_file(), name
    rows = _log(tiny_run / "log.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert b"\r" not in (tiny_run / "log.csv").read_bytes()  # plain newlines, for shell tools
    for col in ("train_cls", "train_lung", "train_infection", "train_total", "val_total", "val_lung_dice"):
        assert rows[0][col] != "", col


def test_seeded_training_is_reproducible(tiny_cfg, tiny_run, tmp_path):
    train(tiny_cfg, tmp_path, progress=False)
    a, b = _log(tiny_run / "log.csv"), _log(tmp_path / "log.csv")
    assert a[0]["train_total"] == b[0]["train_total"]
    assert json.loads((tiny_run / "split.json").read_text()) == json.loads(
        (tmp_path / "split.json").read_text()
    )


def _crash_after_first_epoch(cfg, out, monkeypatch):
    """Train ``cfg`` into ``out`` and crash right after epoch 0's checkpoints were written."""
    import spikect.train as tr

    real_plot = tr.plot_losses

    def crash(path, history, heads):
        real_plot(path, history, heads)
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "plot_losses", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False)
    monkeypatch.setattr(tr, "plot_losses", real_plot)


def test_resume_continues_where_it_stopped(tiny_cfg, tiny_run, tmp_path, monkeypatch):
    _crash_after_first_epoch(tiny_cfg, tmp_path, monkeypatch)
    assert len(_log(tmp_path / "log.csv")) == 1
    train(tiny_cfg, tmp_path, resume=tmp_path / "last.safetensors", progress=False)
    resumed, straight = _log(tmp_path / "log.csv"), _log(tiny_run / "log.csv")
    assert [r["epoch"] for r in resumed] == ["0", "1"]
    assert resumed[1]["train_total"] == straight[1]["train_total"]  # bit-identical to the uninterrupted run


def test_ema_validates_the_moving_average_and_resumes_it(tiny_cfg, tmp_path, monkeypatch):
    import copy

    from spikect.checkpoint import load_checkpoint

    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.ema = 0.5
    straight = tmp_path / "straight"
    train(cfg, straight, progress=False)
    last = load_checkpoint(straight / "last.safetensors")
    assert set(last.raw) == set(last.model)  # the training weights ride along, for --resume
    assert any(not torch.equal(last.model[k], last.raw[k]) for k in last.model)
    assert not load_checkpoint(straight / "best.safetensors").raw  # what ships is the average alone

    _crash_after_first_epoch(cfg, tmp_path / "resumed", monkeypatch)
    train(cfg, tmp_path / "resumed", resume=tmp_path / "resumed" / "last.safetensors", progress=False)
    a, b = _log(straight / "log.csv"), _log(tmp_path / "resumed" / "log.csv")
    # validation runs on the average: restored from the checkpoint, not restarted from the raw weights
    assert a[1]["val_total"] == b[1]["val_total"] and a[1]["train_total"] == b[1]["train_total"]
    resumed = load_checkpoint(tmp_path / "resumed" / "last.safetensors")
    assert all(torch.equal(resumed.model[k], last.model[k]) for k in last.model)


def test_training_without_ema_keeps_no_second_copy(tiny_run):
    from spikect.checkpoint import load_checkpoint

    assert not load_checkpoint(tiny_run / "last.safetensors").raw


def test_ann_warm_start_trains_the_twin_then_the_converted_snn(tiny_cfg, tmp_path):
    import copy

    from spikect.checkpoint import load_checkpoint

    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.ann_warmup_epochs, cfg.train.epochs, cfg.train.convert_batches = 2, 1, 2
    train(cfg, tmp_path, progress=False)
    twin = load_checkpoint(tmp_path / "ann-warmup" / "last.safetensors")
    assert twin.config.model.neuron.kind == "relu" and twin.config.model.t_steps == 1
    assert [r["epoch"] for r in _log(tmp_path / "ann-warmup" / "log.csv")] == ["0", "1"]
    snn = load_checkpoint(tmp_path / "last.safetensors")
    assert snn.config.model.neuron.kind == "lif" and snn.config.train.ann_warmup_epochs == 2
    assert [r["epoch"] for r in snn.meta["ann_warmup"]] == [0, 1]  # kept for the training-time record
    assert json.loads((tmp_path / "split.json").read_text()) == json.loads(
        (tmp_path / "ann-warmup" / "split.json").read_text()
    )
    # the SNN started from the twin's weights (conv weights are not touched by conversion)...
    name = "encoder.levels.1.0.op.weight"
    fresh = tmp_path / "fresh"
    cfg.train.ann_warmup_epochs = 0
    train(cfg, fresh, progress=False)
    start = load_checkpoint(fresh / "last.safetensors").model[name]
    assert (snn.model[name] - twin.model[name]).abs().mean() < (start - twin.model[name]).abs().mean()
    # the same command again reuses the finished warm-up instead of training the twin twice...
    cfg.train.ann_warmup_epochs = 2
    train(cfg, tmp_path, progress=False)
    assert len(_log(tmp_path / "ann-warmup" / "log.csv")) == 2
    # ...and a warm-up folder of another config is not silently reused
    cfg.train.lr = 0.01
    with pytest.raises(ValueError, match="another config"):
        train(cfg, tmp_path, progress=False)


@pytest.mark.parametrize("root", ["covid19-ct-seg-png", "sarscov2-ct"])
def test_evaluate_cli_on_held_out_part(tiny_run, root, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main(
        [
            "evaluate",
            str(shared(root)),
            "--weights",
            str(tiny_run / "best.safetensors"),
            "--part",
            "test",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert list(result) == [
        "n_images",
        "lung_dice",
        "lung_iou",
        "infection_dice",
        "infection_iou",
        "accuracy",
        "sensitivity",
        "specificity",
        "auc",
        "n_groups",
        "group_auc",
    ]
    assert result["n_images"] > 0
    split = json.loads((tiny_run / "split.json").read_text())
    test_groups = {g for d in split["datasets"] if d["root"].endswith(root) for g in d["test"]["groups"]}
    assert 0 < result["n_groups"] <= len(test_groups)  # (a tiny config caps the slices per split)
    if root == "sarscov2-ct":
        assert result["lung_dice"] is None and result["auc"] is not None and result["group_auc"] is not None
    else:
        assert 0 <= result["lung_dice"] <= 1 and result["specificity"] is None and result["group_auc"] is None
    assert "lung_dice" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--weights", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error" in err
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04\x95" + b"\0" * 20)
    assert main(["evaluate", str(shared("sarscov2-ct")), "--weights", str(pickle)]) == 2
    assert "pickle" in capsys.readouterr().err


def test_init_loads_the_tensors_whose_name_and_shape_match(tiny_cfg, tiny_run):
    import copy

    from spikect.checkpoint import load_checkpoint
    from spikect.config import HeadConfig
    from spikect.model.network import MultiTaskNet
    from spikect.train import init_from

    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.widths = [4, 8, 16]  # the deepest level (and what reads it) changes shape
    model = MultiTaskNet(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = load_checkpoint(tiny_run / "best.safetensors").model
    loaded = init_from(model, tiny_run / "best.safetensors", show=False)
    after = model.state_dict()
    assert "encoder.levels.0.0.op.weight" in loaded
    for k in after:
        if k.endswith("num_batches_tracked"):
            continue
        if k in loaded:
            assert torch.equal(after[k], src[k]), k
        else:  # not in the source, or of another shape: left as initialised
            assert torch.equal(after[k], before[k]), k
    assert any(k in src and src[k].shape != after[k].shape for k in after)  # some were skipped
    other = copy.deepcopy(cfg)
    other.model.heads = [HeadConfig(name="other", type="seg")]
    other.model.widths = [3, 5, 7]
    with pytest.raises(ValueError, match="shares no tensor"):
        init_from(MultiTaskNet(other.model), tiny_run / "best.safetensors", show=False)


def test_contrast_consistency_adds_its_term_in_training_only(tiny_cfg):
    from spikect.bench import random_batch
    from spikect.losses import MultiTaskLoss
    from spikect.model.network import MultiTaskNet
    from spikect.train import Objective

    torch.manual_seed(0)
    cfg = tiny_cfg
    model = MultiTaskNet(cfg.model)
    loss_fn = MultiTaskLoss(cfg.model.heads, cfg.loss, cfg.model.t_steps)
    batch = random_batch(cfg, 4)
    plain = Objective(model, loss_fn).train()
    torch.manual_seed(1)
    base, parts, _ = plain(batch)
    assert "consistency" not in parts
    checked = Objective(model, loss_fn, consistency=3.0, consistency_gamma=(0.5, 0.5)).train()
    cls_calls = []
    hook = model.heads["cls"].register_forward_hook(lambda *_: cls_calls.append(1))
    torch.manual_seed(1)
    total, parts, _ = checked(batch)
    hook.remove()
    assert len(cls_calls) == 2  # the second pass runs every head, as the shipped weights were trained
    term = float(parts["consistency"].detach())
    assert term > 0  # a darker copy changes what the untrained net outputs
    # the term is the weighted difference (BatchNorm in training mode: the first pass is unchanged)
    assert math.isclose(float(total.detach()), float(base.detach()) + 3.0 * term, rel_tol=1e-5)
    total.backward()
    assert model.encoder.levels[0][0].op.weight.grad is not None
    # one segmentation slice in the batch: no second pass (BatchNorm cannot take a batch of one)
    one = dict(batch)
    for h in cfg.model.heads:
        if h.type == "seg":
            one[f"has_{h.mask}"] = torch.tensor([True, False, False, False])
    assert "consistency" not in checked(one)[1]
    checked.eval()
    with torch.no_grad():
        assert "consistency" not in checked(batch)[1]
    # the same contrast (g = 1) gives the same output; upside down, this untrained net answers differently
    same = Objective(model, loss_fn, consistency=1.0, consistency_gamma=(1.0, 1.0)).train()
    assert float(same(batch)[1]["consistency"].detach()) < 1e-10
    upside = Objective(model, loss_fn, consistency=1.0, consistency_gamma=(1.0, 1.0), consistency_vflip=1.0)
    assert float(upside.train()(batch)[1]["consistency"].detach()) > 1e-6
    # a model without seg heads (a cls-only baseline inheriting the default config) has nothing to compare
    import copy

    cls_only = copy.deepcopy(cfg)
    cls_only.model.heads = [h for h in cfg.model.heads if h.type == "cls"]
    cls_only.loss.consistency = 10.0
    net = MultiTaskNet(cls_only.model)
    objective = Objective.from_config(net, MultiTaskLoss(cls_only.model.heads, cls_only.loss, 2), cls_only)
    assert objective.consistency == 10.0
    assert "consistency" not in objective.train()(batch)[1]


def _cv_folds():
    """scripts/cv_folds.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cv_folds", REPO / "scripts" / "cv_folds.py")
    cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cv)
    return cv


def test_cv_folds_fold_config_sets_the_fold_and_overrides_seed_and_threads(tmp_path):
    import yaml

    cv = _cv_folds()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"val_groups": ["c01"]}, "train": {"seed": 0, "threads": 2}}))
    kept = yaml.safe_load(cv.fold_config(config, 6, 4, tmp_path).read_text())
    assert kept["data"] == {"val_folds": 6, "val_fold": 4} and kept["train"] == {"seed": 0, "threads": 2}
    changed = yaml.safe_load(cv.fold_config(config, 6, 1, tmp_path, threads=1, seed=3).read_text())
    assert changed["train"] == {"seed": 3, "threads": 1} and changed["data"]["val_fold"] == 1


def test_cv_folds_script_runs_one_training_per_fold_and_summarises(tiny_cfg, tmp_path, capsys):
    import yaml

    cv = _cv_folds()
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["data"]["seg_roots"], cfg["data"]["cls_roots"] = tiny_cfg.data.seg_roots, tiny_cfg.data.cls_roots
    cfg["train"]["epochs"] = 1
    config = tmp_path / "tiny1.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert cv.main([str(config), "2", str(tmp_path / "cv")]) == 0
    out = capsys.readouterr().out
    assert out.count("spikect train") == 2 and "mean ± SD over 2 folds" in out
    vals = []
    for fold in (0, 1):
        split = json.loads((tmp_path / "cv" / f"fold{fold}" / "split.json").read_text())
        vals.append({g for d in split["datasets"] for g in d["val"]["groups"]})
        assert split["settings"]["val_folds"] == 2 and split["settings"]["val_fold"] == fold
    assert vals[0] and vals[1] and not vals[0] & vals[1]
    # each fold's last model rescored on its validation cls slices gives the AUC its training logged
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("fold  slices")))
    for fold in (0, 1):
        cells = lines[header + 1 + fold].split()
        logged = cv.read_log(tmp_path / "cv" / f"fold{fold}" / "log.csv")[-1]["val_auc"]
        assert cells[0] == str(fold) and cells[2] == f"{logged:.3f}"
        cls_groups = {g for g in vals[fold] if ":" in g}
        assert int(cells[3]) == len(cls_groups)
    assert "pooled over 2 folds" in lines[header + 3] and "slices: accuracy" in lines[header + 3]
    assert f"{sum(len({g for g in v if ':' in g}) for v in vals)} groups" in lines[header + 4]
    assert cv.main([str(config), "2", str(tmp_path / "cv")]) == 0  # finished folds are not rerun
    assert "spikect train" not in capsys.readouterr().out
