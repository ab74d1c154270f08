import json
import math

from spikect.bench import check_targets, run_bench
from spikect.cli import build_parser
from spikect.config import Config, HeadConfig, ModelConfig, TrainConfig
from tests.conftest import REPO

KEYS = (
    "train_ms_per_slice",
    "infer_ms_per_slice",
    "infer_ms_per_slice_plain",
    "ann_infer_ms_per_slice",
    "snn_vs_ann_time",
    "peak_rss_gb",
    "peak_rss_gb_train",
    "peak_rss_gb_diagnose",
    "model_gflop_per_slice",
    "model_gflops_per_s",
    "matmul_peak_gflops_per_s",
    "ct300_seconds",
    "slices_per_s",
)
STAGES = ("read", "preprocess", "model", "postprocess", "write")


def _tiny() -> Config:
    model = ModelConfig(
        image_size=32,
        t_steps=2,
        widths=[4, 8],
        heads=[
            HeadConfig(name="cls", type="cls", hidden=[8]),
            HeadConfig(name="lung", type="seg"),
            HeadConfig(name="infection", type="seg"),
        ],
    )
    cfg = Config(model=model, train=TrainConfig(batch_size=2))
    cfg.data.max_per_split = 4  # the epoch estimate reads a few real slices when ../shared/data is there
    return cfg


def test_bench_on_a_tiny_config_writes_positive_finite_figures(tmp_path, capsys):
    """Every figure of one run, the diagnose run on a generated 6-slice 64² volume included (in child
    processes, as the real run): small enough for CI."""
    out = tmp_path / "sub" / "bench.json"
    result = run_bench(
        _tiny(),
        out,
        infer_batch=2,
        infer_iters=2,
        train_iters=2,
        matmul_size=128,
        progress=False,
        ct_slices=6,
        ct_size=64,
        epoch_steps=1,
        threads=1,
        data_base=REPO,
    )
    for key in KEYS:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert set(result["ct300_stages"]) == set(STAGES)
    assert sum(result["ct300_stages"].values()) <= result["ct300_seconds"] + 1e-6
    assert result["ct_slices"] == 6 and result["ct_size"] == 64
    assert result["threads"] == 1 and result["t_steps"] == 2 and result["image_size"] == 32
    assert result["train_batch"] == 2 and result["torch_version"] and result["cpu"]
    epoch = result["train_epoch_minutes"]  # None, with the reason, where the real data is absent
    assert (epoch is None and "not measured" in result["train_epoch_mode"]) or epoch > 0
    # a 6-slice volume says nothing about the 300-slice goal: n/a, not a PASS
    assert result["targets"]["ct300_seconds <= 60"]["status"] == "n/a"
    assert {t["status"] for t in result["targets"].values()} <= {"PASS", "FAIL", "n/a"}
    assert json.loads(out.read_text()) == result
    printed = capsys.readouterr().out
    assert "train_ms_per_slice" in printed and "once for all T" in printed and "target" in printed


def test_targets_pass_and_fail_at_their_limits():
    r = {
        "ct300_seconds": 60.0,
        "ct_slices": 300,
        "ct_size": 512,
        "model_gflops_per_s": 30.0,
        "matmul_peak_gflops_per_s": 100.0,
        "train_epoch_minutes": 15.1,
        "peak_rss_gb_train": None,
    }
    status = {k: v["status"] for k, v in check_targets(r).items()}
    assert status == {
        "ct300_seconds <= 60": "PASS",
        "model_gflops_per_s >= 0.6 x matmul peak": "FAIL",
        "train_epoch_minutes <= 15": "FAIL",
        "peak_rss_gb_train <= 8": "n/a",
    }


def test_bench_options_parse():
    args = build_parser().parse_args(
        ["bench", "--quick", "--threads", "2", "--full-epoch", "--json", "x.json"]
    )
    assert args.quick and args.threads == 2 and args.full_epoch and args.json == "x.json"
