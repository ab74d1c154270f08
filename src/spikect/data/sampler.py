"""Per-epoch negative subsampling: all positives (and unknown labels) + a fresh random share of negatives.

Negatives (label 0) outnumber what the cls head needs and carry no masks, so each epoch draws
``round(negative_fraction * n_negatives)`` of them anew from ``seed + epoch`` (call :meth:`set_epoch` each
epoch, like ``DistributedSampler``); every sample with label != 0 (COVID and unknown-label seg slices) is
always in. The epoch length is constant, and :meth:`epoch_indices` gives the full shuffled list, so a
distributed wrapper only has to take ``indices[rank::world_size]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Sampler, Subset


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Labels of every sample without loading any: ``.labels`` of the dataset, through Concat/Subset."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_labels(d) for d in dataset.datasets])
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    raise TypeError(f"{type(dataset).__name__} exposes no labels; use spikect.data SliceDataset/ConcatSlices")


class EpochSampler(Sampler[int]):
    """Indices of one epoch: every label != 0, plus ``round(negative_fraction * n_negatives)`` negatives."""

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        negative_fraction: float,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if not 0.0 <= negative_fraction <= 1.0:
            raise ValueError(f"negative_fraction must be in [0, 1], got {negative_fraction}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.negative_fraction = float(negative_fraction)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self._keep = np.flatnonzero(self.labels != 0)
        self._negatives = np.flatnonzero(self.labels == 0)
        self.n_negatives = int(round(self.negative_fraction * len(self._negatives)))

    @classmethod
    def from_dataset(cls, dataset: Dataset, negative_fraction: float, seed: int = 0) -> EpochSampler:
        return cls(dataset_labels(dataset), negative_fraction, seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The dataset indices of ``epoch`` (default: the current one), shuffled unless ``shuffle=False``."""
        rng = np.random.default_rng(self.seed + (self.epoch if epoch is None else int(epoch)))
        drawn = rng.choice(self._negatives, size=self.n_negatives, replace=False)
        indices = np.concatenate([self._keep, drawn])
        return rng.permutation(indices) if self.shuffle else np.sort(indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices().tolist())

    def __len__(self) -> int:
        return len(self._keep) + self.n_negatives
