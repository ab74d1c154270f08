"""A training run killed with SIGKILL resumes with at most one epoch lost and its log continued."""

import csv
import signal
import subprocess
import sys
import time

import yaml

from tests.conftest import REPO, shared


def _rows(path):
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sigkill_then_resume(tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["data"]["seg_roots"] = [str(shared("covid19-ct-seg-png"))]
    cfg["data"]["cls_roots"] = [str(shared("sarscov2-ct"))]
    cfg["train"]["epochs"] = 40
    cfg["train"]["patience"] = 100
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "spikect", "train", "--no-progress"]
    proc = subprocess.Popen(
        [*cmd, "--config", str(tmp_path / "cfg.yaml"), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while len(_rows(out / "log.csv")) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(_rows(out / "log.csv")) >= 2, "training did not get through two epochs"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = _rows(out / "log.csv")
    assert len(before) < 40, "the run finished before it could be killed"
    # shorten the rest of the run: resume continues under the checkpoint's own config (40 epochs), so
    # stop it with a second kill once it has logged two more epochs, then check the log
    proc = subprocess.Popen(
        [*cmd, "--resume", str(out / "last.safetensors"), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while (
            len(_rows(out / "log.csv")) < len(before) + 2 and time.time() < deadline and proc.poll() is None
        ):
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    after = _rows(out / "log.csv")
    assert len(after) >= len(before) + 1, err
    epochs = [int(r["epoch"]) for r in after]
    assert epochs == list(range(len(after))), "the resumed log must continue the old one without gaps"
    # the resumed run lost at most the epoch in progress: every epoch logged before the kill is kept as is
    assert after[: len(before)] == before
