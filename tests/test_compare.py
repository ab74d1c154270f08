"""spikect compare: the compare file, the held-out check, and the tiny end-to-end run on real slices."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from spikect.checkpoint import load_checkpoint
from spikect.compare import (
    CONFOUNDED_DATA,
    check_held_out,
    load_spec,
    merge,
    method_config,
    prune_roots,
    train_method,
)
from spikect.config import Config, ConfigError, DataConfig, HeadConfig
from spikect.data import DatasetSplit, Split, list_records
from tests.conftest import REPO, shared

TINY = REPO / "configs" / "compare-tiny.yaml"
PNGS = (
    "loss_curves.png",
    "overlay_lung.png",
    "overlay_infection.png",
    "cls_examples.png",
    "roc.png",
    "segmentation.png",
    "energy.png",
)


def test_merge_updates_mappings_and_replaces_lists():
    base = {"model": {"t_steps": 4, "heads": [1, 2, 3], "neuron": {"kind": "lif", "tau": 2.0}}}
    out = merge(base, {"model": {"heads": [9], "neuron": {"kind": "relu"}}})
    assert out == {"model": {"t_steps": 4, "heads": [9], "neuron": {"kind": "relu", "tau": 2.0}}}
    assert base["model"]["heads"] == [1, 2, 3]  # the base is not modified


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "base.yaml").write_text("model: {image_size: 32, widths: [4, 8]}\n")
    path = tmp_path / "cmp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        ("[]", "no methods"),
        ("[{name: a}, {name: a}]", "duplicate"),
        ("[{name: 'a b'}]", "folder names"),
        ("[{name: a, setup: other}]", "setup"),
        ("[{name: a, weights: default, overrides: {train: {epochs: 1}}}]", "own config"),
        ("[{name: a, weights: default, heads: [cls]}]", "own config"),
        ("[{name: a, typo: 1}]", "unknown key"),
    ],
)
def test_bad_compare_files_are_refused_with_the_reason(tmp_path, methods, message):
    with pytest.raises(ConfigError, match=message):
        load_spec(_write(tmp_path, f"base: base.yaml\nmethods: {methods}\n"))


def test_method_config_layers_overrides_heads_and_setup(tmp_path):
    spec, base = load_spec(
        _write(
            tmp_path,
            "base: base.yaml\noverrides: {train: {epochs: 3}}\nmethods:\n"
            "  - {name: ann, overrides: {model: {neuron: {kind: relu}, t_steps: 1}, train: {epochs: 2}}}\n"
            "  - {name: conf, setup: confounded, heads: [cls]}\n"
            "  - {name: bad, setup: confounded, heads: [lung]}\n"
            "  - {name: typo, heads: [lungs]}\n",
        )
    )
    ann = method_config(spec, base, spec.methods[0])
    assert (ann.model.neuron.kind, ann.model.t_steps, ann.train.epochs, ann.model.image_size) == (
        "relu",
        1,
        2,
        32,
    )
    assert [h.name for h in ann.model.heads] == ["cls", "lung", "infection"]  # the base's (default) heads
    conf = method_config(spec, base, spec.methods[1])
    assert conf.train.epochs == 3
    assert [h.name for h in conf.model.heads] == ["cls"]
    assert conf.model.heads[0].hidden == ann.model.heads[0].hidden  # the base's definition of that head
    assert (
        (conf.data.seg_cls_labels, conf.data.cls_labels)
        == (True, [0])
        == tuple(CONFOUNDED_DATA["data"].values())
    )
    assert (
        conf.data.seg_roots and conf.data.cls_roots
    )  # positives from the seg set, negatives from the cls set
    with pytest.raises(ConfigError, match="has none"):
        method_config(spec, base, spec.methods[2])
    with pytest.raises(ConfigError, match=r"\['lungs'\] are not in the base"):
        method_config(spec, base, spec.methods[3])


def test_the_base_is_a_file_or_a_checkpoints_config(tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        load_spec(_write(tmp_path, "methods: [{name: a}]\n"))
    with pytest.raises(ConfigError, match="exactly one"):
        load_spec(_write(tmp_path, "base: base.yaml\nbase_weights: default\nmethods: [{name: a}]\n"))
    spec, base = load_spec(REPO / "configs" / "compare.yaml")  # the full run: the shipped model's config
    from spikect.checkpoint import load_checkpoint

    assert base == load_checkpoint("default").config.to_dict()
    cnn = method_config(spec, base, next(m for m in spec.methods if m.name == "mt-cnn"))
    assert cnn.model.widths == load_checkpoint("default").config.model.widths
    assert cnn.model.neuron.kind == "relu" and cnn.train.ann_warmup_epochs == 0  # an ANN has no warm-up
    snn = method_config(spec, base, next(m for m in spec.methods if m.name == "snn-lung"))
    assert snn.train.ann_warmup_epochs == base["train"]["ann_warmup_epochs"]  # trained as ours is


def test_prune_roots_keeps_only_the_data_a_head_learns_from():
    seg_only = Config()
    seg_only.model.heads = [HeadConfig(name="lung", type="seg")]
    assert prune_roots(seg_only).data.cls_roots == []
    assert prune_roots(seg_only).data.seg_roots == seg_only.data.seg_roots
    cls_only = Config()
    cls_only.model.heads = [HeadConfig(name="cls", type="cls")]
    assert prune_roots(cls_only).data.seg_roots == []  # unlabelled seg slices teach a cls head nothing
    cls_only.data.seg_cls_labels = True
    assert prune_roots(cls_only).data.seg_roots == cls_only.data.seg_roots


def _split(train: list[str], val: list[str], test: list[str], root: str = "data/seg") -> Split:
    groups = {"train": train, "val": val, "test": test}
    return Split(
        seed=0, datasets=[DatasetSplit(root=root, layout="seg", ids={p: [] for p in groups}, groups=groups)]
    )


def test_a_checkpoint_that_saw_a_test_patient_is_refused():
    ours = _split(["a", "b"], ["c"], ["d"])
    assert check_held_out("m", _split(["a"], ["b", "c"], ["d"]).to_dict(), ours) == 1
    with pytest.raises(ValueError, match=r"m: .*test group\(s\) \['d'\]"):
        check_held_out("m", _split(["a", "d"], ["c"], ["b"]).to_dict(), ours)
    assert check_held_out("m", _split(["d"], [], [], root="other").to_dict(), ours) == 0  # other data
    with pytest.raises(ValueError, match="no split"):
        check_held_out("m", None, ours)


def test_cls_labels_keeps_only_those_labels_of_the_cls_set():
    root = shared("sarscov2-ct")
    everything = list_records(root, DataConfig())
    negatives = list_records(root, DataConfig(cls_labels=[0]))
    assert {r.label for r in everything} == {0, 1}
    assert {r.label for r in negatives} == {0}
    assert len(negatives) == sum(r.label == 0 for r in everything)


def _table(report: str, heading: str) -> list[str]:
    """First column of the first table under ``heading``."""
    section = report.split(heading, 1)[1]
    rows = re.findall(r"^\| (?!method|name)([^|]+?) \|", section.split("\n\n|", 1)[1].split("\n\n")[0], re.M)
    return [r.strip() for r in rows if not r.startswith("---")]


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory):
    shared("covid19-ct-seg-png")
    shared("sarscov2-ct")
    from spikect.compare import run_compare

    out = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the configs' data roots are relative to the repository, as for `spikect train`
        results = run_compare(TINY, out, progress=False)
    return out, results


@pytest.mark.slow
def test_tiny_compare_writes_the_report_and_every_figure(tiny_compare):
    out, results = tiny_compare
    for name in ("report.md", "results.json", "split.json", *PNGS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    for name in PNGS:
        assert f"]({name})" in report, name
    assert "Wall time" in report and results["hardware"]["cpu"] in report
    assert "budgets differ" in report  # ours: loaded epochs, the baselines 1 here
    ours, meta = results["methods"][0], load_checkpoint("default").meta
    warm = meta["ann_warmup"]  # the shipped model's ANN warm-up: its epochs and time count as training
    assert ours["warmup_epochs"] == len(warm) > 0 and f"+ {len(warm)} ANN warm-up" in report
    spiking_s = sum(r["seconds"] for r in meta["history"])
    assert ours["train_s"] == pytest.approx(spiking_s + sum(r["seconds"] for r in warm))
    assert json.loads((out / "results.json").read_text())["test"] == results["test"]


@pytest.mark.slow
def test_tiny_compare_tables_have_one_row_per_method_with_that_task(tiny_compare):
    out, results = tiny_compare
    names = [m["name"] for m in results["methods"]]
    assert names == [m.name for m in load_spec(TINY)[0].methods]
    report = (out / "report.md").read_text()
    seg = ["ours", "mt-cnn", "unet-lung", "unet-infection", "snn-lung", "snn-infection"]
    cls = ["ours", "mt-cnn", "cnn-cls", "cnn-cls-confounded", "snn-cls", "snn-cls-confounded"]
    assert _table(report, "## Segmentation") == seg
    assert _table(report, "## Classification") == cls
    assert _table(report, "## Source-confounded") == cls
    assert _table(report, "## Energy") == names
    assert _table(report, "## Inference time") == names
    by_name = {m["name"]: m for m in results["methods"]}
    assert by_name["unet-lung"]["seg"]["infection_dice"] is None  # a lung-only model scores no infection
    assert by_name["snn-cls-confounded"]["setup"] == "confounded"
    for m in results["methods"]:
        if not m["snn"]:
            assert m["energy"]["ratio"] == 1.0
        assert m["ms_per_slice"] > 0


@pytest.mark.slow
def test_tiny_compare_tests_on_the_default_models_held_out_patients(tiny_compare):
    from spikect.checkpoint import load_checkpoint

    _, results = tiny_compare
    default = Split.from_dict(load_checkpoint("default").meta["split"])
    seg_test = next(d for d in default.datasets if d.layout == "seg").groups["test"]
    assert results["test"]["seg_groups"] and set(results["test"]["seg_groups"]) <= set(seg_test)
    cls_test = next(d for d in default.datasets if d.layout == "cls").groups["test"]
    assert set(results["test"]["cls_groups"]) <= set(cls_test)
    assert all(m["splits_checked"] >= 1 for m in results["methods"])


@pytest.mark.slow
def test_a_run_folder_of_another_config_is_not_resumed(tiny_compare):
    out, _ = tiny_compare
    spec, base = load_spec(TINY)
    cfg = method_config(spec, base, next(m for m in spec.methods if m.name == "mt-cnn"))
    cfg.train.lr *= 2
    with pytest.raises(ValueError, match="another config"):
        train_method(cfg, out / "runs" / "mt-cnn", progress=False)
