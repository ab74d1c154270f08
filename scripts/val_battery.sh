#!/usr/bin/env bash
# The validation battery of the choice rules in docs/experiments.md, for one checkpoint: validation
# figures plain, at gamma 1.5 / 0.7 and flipped, and `spikect diagnose` on the validation COVID volumes.
# usage: bash scripts/val_battery.sh WEIGHTS OUT_DIR [DATA_DIR]      (DATA_DIR default: ../shared/data)
# Writes OUT_DIR/{cls_val,seg_val,seg_val_g1.5,seg_val_g0.7,seg_val_vflip}.txt and OUT_DIR/diag_<vol>.txt.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/val_battery.sh WEIGHTS OUT_DIR [DATA_DIR]" >&2
  exit 2
fi
weights=$1 out=$2 data=${3:-../shared/data}
bin=${SPIKECT_BIN:-.venv/bin}
seg=$data/covid19-ct-seg-png
for d in "$seg" "$data/sarscov2-ct"; do
  [ -d "$d" ] || { echo "error: $d is missing (the battery needs ../shared/data)" >&2; exit 2; }
done
mkdir -p "$out"
ev() { "$bin/spikect" evaluate "$@" --weights "$weights" --part val --no-progress; }
ev "$data/sarscov2-ct" > "$out/cls_val.txt"
ev "$seg" > "$out/seg_val.txt"
ev "$seg" --gamma 1.5 > "$out/seg_val_g1.5.txt"
ev "$seg" --gamma 0.7 > "$out/seg_val_g0.7.txt"
ev "$seg" --vflip > "$out/seg_val_vflip.txt"
# the checkpoint's validation volumes as folders of their display slices: symlinks, nothing is copied
vols=$("$bin/python" - "$weights" "$seg" "$out/vols" <<'PY'
import sys
from pathlib import Path
from spikect.checkpoint import load_checkpoint
from spikect.config import DataConfig
from spikect.data.datasets import list_records
weights, seg, dest = sys.argv[1], Path(sys.argv[2]).resolve(), Path(sys.argv[3])
split = load_checkpoint(weights).meta["split"]
val = [g for d in split["datasets"] if d["layout"] == "seg" for g in d["val"]["groups"]]
for r in list_records(seg, DataConfig(), "seg"):
    if r.group in val:
        link = dest / r.group / Path(r.image).name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(seg / r.image)
print(" ".join(val))
PY
)
for v in $vols; do
  "$bin/spikect" diagnose "$out/vols/$v" -o "$out/diag_$v" --weights "$weights" --no-progress > "$out/diag_$v.txt"
done
grep -H "lung_dice\|infection_dice\|^auc\|sensitivity\|specificity" "$out"/*_val*.txt
tail -qn 1 "$out"/diag_*.txt
