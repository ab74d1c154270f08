import json
import math

from spikect.bench import run_bench
from spikect.config import Config, HeadConfig, ModelConfig, TrainConfig

KEYS = (
    "train_ms_per_slice",
    "infer_ms_per_slice",
    "peak_rss_gb",
    "model_gflop_per_slice",
    "model_gflops_per_s",
    "matmul_peak_gflops_per_s",
)


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
    return Config(model=model, train=TrainConfig(batch_size=2))


def test_bench_on_a_tiny_config_writes_positive_finite_figures(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    result = run_bench(
        _tiny(), out, infer_batch=2, infer_iters=2, train_iters=2, matmul_size=128, progress=False
    )
    for key in KEYS:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert result["threads"] >= 1 and result["t_steps"] == 2 and result["image_size"] == 32
    assert result["train_batch"] == 2 and result["torch_version"] and result["cpu"]
    assert json.loads(out.read_text()) == result
    printed = capsys.readouterr().out
    assert "train_ms_per_slice" in printed and "once for all T" in printed
