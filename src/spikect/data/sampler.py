"""Per-epoch negative subsampling: all positives (and unknown labels) + a fresh random share of negatives.

Negatives (label 0) outnumber what the cls head needs and carry no masks, so each epoch draws
``round(negative_fraction * n_negatives)`` of them anew from ``seed + epoch`` (call :meth:`set_epoch` each
epoch, like ``DistributedSampler``); every sample with label != 0 (COVID and unknown-label seg slices) is
always in. The epoch length is constant, and :meth:`epoch_indices` gives the full shuffled list.

Data-parallel training (``num_replicas > 1``): every rank draws the same list (the draw depends only on
``seed + epoch``), pads it to a multiple of ``num_replicas`` by repeating its start (or, with ``drop_last``,
drops its tail), and keeps ``indices[rank::num_replicas]``, as ``DistributedSampler`` does. So the ranks
see disjoint shards of equal length (DDP needs the same number of steps on every rank), and with a
per-rank batch ``b``, step ``k`` of the ranks together is the ``k``-th batch of size ``b * num_replicas``
of the single-process list.
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
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not 0.0 <= negative_fraction <= 1.0:
            raise ValueError(f"negative_fraction must be in [0, 1], got {negative_fraction}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.negative_fraction = float(negative_fraction)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
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

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's share of an epoch's list: the list padded by repeating its start (or cut, with
        ``drop_last``) to ``len(self) * num_replicas``, then every ``num_replicas``-th index from ``rank``."""
        if self.num_replicas == 1:
            return indices
        size = len(self) * self.num_replicas
        if size > len(indices):
            indices = np.concatenate([indices, np.resize(indices, size - len(indices))])
        return indices[:size][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard(self.epoch_indices()).tolist())

    @property
    def total_size(self) -> int:
        """Samples of one epoch over all ranks, before padding."""
        return len(self._keep) + self.n_negatives

    def __len__(self) -> int:
        if self.drop_last:
            return self.total_size // self.num_replicas
        return -(-self.total_size // self.num_replicas)  # ceil
