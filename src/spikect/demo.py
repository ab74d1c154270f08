"""``spikect demo``: diagnose the synthetic chest phantom, whose true masks are known, and score the result.

Writes into ``outdir``: ``phantom.nii.gz`` (HU CT from :mod:`spikect.phantom`), its known masks
``phantom_{lung,left_lung,right_lung,infection,body}.nii.gz``, the diagnosis in ``diagnosis/`` (exactly
what ``spikect diagnose phantom.nii.gz -o diagnosis`` writes), and ``check.json``: Dice of the predicted
lung and infection masks against the known ones and how many of the phantom's lesions were found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from spikect.checkpoint import resolve_weights
from spikect.diagnose import DEFAULT_OUTPUT_TYPES, check_device, run_diagnose
from spikect.phantom import write_phantom_nifti
from spikect.report import write_json


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two bool masks; None when both are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return None if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def _mask(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj) > 0


def check(known: dict[str, Path], result: Path) -> dict[str, Any]:
    """Scores of a diagnosis folder against the phantom's known masks (same NIfTI grid)."""
    lung, infection = _mask(result / "lung.nii.gz"), _mask(result / "infection.nii.gz")
    true_lung, true_inf = _mask(known["lung"]), _mask(known["infection"])
    lesions, n = ndimage.label(true_inf, structure=np.ones((3, 3, 3), dtype=bool))
    found = len(set(np.unique(lesions[infection & true_inf])) - {0})
    return {
        "lung_dice": dice(lung, true_lung),
        "infection_dice": dice(infection, true_inf),
        "lesions": int(n),
        "lesions_found": int(found),
        "infection_in_known_lesions": int(np.count_nonzero(infection & true_inf)),
    }


def run_demo(
    outdir: str | Path = "spikect-demo",
    weights: str | Path = "default",
    device: str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    output_types: tuple[str, ...] = DEFAULT_OUTPUT_TYPES,
) -> dict[str, Any]:
    """Write the phantom, diagnose it and score it; returns the scores (also in ``check.json``)."""
    resolve_weights(weights)  # fail before writing anything when there is no model
    check_device(device)
    outdir = Path(outdir)
    paths = write_phantom_nifti(outdir / "phantom.nii.gz")
    status = run_diagnose(
        [paths["ct"]],
        outdir / "diagnosis",
        weights,
        device,
        batch_size,
        progress,
        tuple(dict.fromkeys(("nifti", *output_types))),
    )
    if status != 0:
        raise ValueError("diagnosing the phantom failed (see above)")
    scores = check(paths, outdir / "diagnosis")
    write_json(scores, outdir / "check.json")
    return scores
