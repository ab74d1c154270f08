"""Training augmentation: one random geometry for image and masks, then intensity changes on the image.

The intensity part exists so the model does not learn one display pipeline (the segmentation PNGs were
min-max normalised and CLAHE-equalised; HU input is lung-windowed): gamma, contrast, brightness, an
occasional CLAHE and Gaussian noise. Everything is torch on CPU (~1-2 ms for 256 x 256) and every random
draw comes from the ``generator`` passed in (``None``: torch's global RNG, which DataLoader seeds per worker).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from spikect.config import AugmentConfig


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run per-sample CPU work on one intra-op thread, then restore torch's setting.

    A 256 x 256 slice is too small to gain from intra-op threads, and on a busy CPU their barriers cost
    ~50x (measured: 5 ms -> 250 ms per sample on 2 shared cores). DataLoader workers already use one thread;
    this covers ``num_workers=0``. torch's thread count is process-wide: do not run it beside other threads.
    """
    prev = torch.get_num_threads()
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _chance(p: float, g: torch.Generator | None) -> bool:
    # Always draw, so the random stream does not depend on which probabilities are 0 or 1.
    return float(torch.rand((), generator=g)) < p


@functools.lru_cache(maxsize=8)
def _clahe_grid(h: int, w: int, ty: int, tx: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel: the LUT offsets of its four nearest tile centres [4, H*W] and their weights [4, H*W]."""
    th, tw = math.ceil(h / ty), math.ceil(w / tx)

    def axis(size: int, count: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = ((torch.arange(size, dtype=torch.float32) + 0.5) / step - 0.5).clamp(0, count - 1)
        lo = pos.floor().long()
        return lo, (lo + 1).clamp(max=count - 1), pos - lo

    y0, y1, wy = axis(h, ty, th)
    x0, x1, wx = axis(w, tx, tw)
    corners = [(y0, x0), (y0, x1), (y1, x0), (y1, x1)]
    offsets = torch.stack([((yy[:, None] * tx + xx[None, :]) * bins).reshape(-1) for yy, xx in corners])
    wy, wx = wy[:, None], wx[None, :]
    weights = torch.stack([((1 - wy) * (1 - wx)), ((1 - wy) * wx), (wy * (1 - wx)), (wy * wx)])
    return offsets, weights.reshape(4, -1)


def clahe(img: torch.Tensor, clip_factor: float = 3.0, tiles: int = 8, bins: int = 256) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation of a [0, 1] image [..., H, W] (torch, vectorised).

    The classic algorithm: a histogram per tile of a ``tiles`` x ``tiles`` grid, each bin clipped at
    ``clip_factor`` times the mean bin height (OpenCV's ``clipLimit`` convention) with the excess spread
    uniformly over all bins (one pass, where skimage/OpenCV iterate), the tile's CDF as its mapping, and each
    pixel mapped by bilinear interpolation between the four nearest tile centres.
    """
    shape = img.shape
    x = img.reshape(-1, *shape[-2:]).float().clamp(0.0, 1.0)
    n, h, w = x.shape
    ty, tx = min(tiles, h), min(tiles, w)
    th, tw = math.ceil(h / ty), math.ceil(w / tx)
    idx = (x * (bins - 1)).round_().long()  # [n, h, w] bin of every pixel
    # Pad (edge values) to a whole number of tiles so edge tiles have full histograms.
    padded = F.pad(idx[:, None].float(), (0, tx * tw - w, 0, ty * th - h), mode="replicate")[:, 0].long()
    tile_of = padded.reshape(n, ty, th, tx, tw).permute(0, 1, 3, 2, 4).reshape(n, ty * tx, th * tw)
    tile_of = tile_of + (torch.arange(n * ty * tx) * bins).reshape(n, ty * tx, 1)
    hist = torch.bincount(tile_of.reshape(-1), minlength=n * ty * tx * bins).reshape(n, ty * tx, bins).float()
    limit = max(clip_factor, 1.0) * (th * tw) / bins
    excess = (hist - limit).clamp_(min=0).sum(-1, keepdim=True)
    cdf = (hist.clamp_(max=limit) + excess / bins).cumsum_(-1)
    lut = (cdf / cdf[..., -1:]).reshape(n, -1)  # [n, tiles * bins], each tile's CDF in [0, 1]

    offsets, weights = _clahe_grid(h, w, ty, tx, bins)
    where = offsets[None] + idx.reshape(n, 1, h * w)  # [n, 4, H*W]
    values = lut.gather(1, where.reshape(n, -1)).reshape(n, 4, h * w)
    out = (values * weights).sum(1)
    return out.reshape(shape).to(img.dtype)


class Augmenter:
    """``Augmenter(cfg)(image [C, H, W], {name: mask [1, H, W]}, generator) -> (image, masks)``.

    Geometry (flips, rotation, scale) is drawn once and applied to image and every mask; flips are exact
    index flips, rotation/scale resample the image bilinearly and the masks by nearest neighbour, so masks
    keep exactly their input values (0/1 stay 0/1). Area moved in from outside the slice is 0 (black).
    Intensity changes touch the image only; the result is clamped to [0, 1].
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(
        self,
        image: torch.Tensor,
        masks: dict[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        masks = dict(masks or {})
        if not self.cfg.enabled:
            return image, masks
        with one_thread():
            image, masks = self.geometry(image, masks, generator)
            return self.intensity(image, generator), masks

    def geometry(
        self, image: torch.Tensor, masks: dict[str, torch.Tensor], g: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        names = list(masks)
        hflip, vflip = _chance(c.hflip, g), _chance(c.vflip, g)
        angle = math.radians(_uniform(-c.rotate_deg, c.rotate_deg, g))
        zoom = _uniform(c.scale[0], c.scale[1], g)
        dims = [d for d, on in ((-1, hflip), (-2, vflip)) if on]
        if dims:
            image = image.flip(dims)
            masks = {k: m.flip(dims) for k, m in masks.items()}
        if abs(angle) < 1e-6 and abs(zoom - 1.0) < 1e-6:
            return image, masks
        # affine_grid maps output -> input coordinates: dividing by zoom enlarges the content by zoom.
        # Normalised coordinates are isotropic only for square images, which is what the model sees.
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=torch.float32)
        grid = F.affine_grid(theta, [1, 1, *image.shape[-2:]], align_corners=False)
        image = F.grid_sample(image[None].float(), grid, mode="bilinear", align_corners=False)[0]
        if names:
            stack = torch.cat([masks[k].float() for k in names])[None]
            warped = F.grid_sample(stack, grid, mode="nearest", align_corners=False)[0]
            masks = {k: warped[i : i + 1].to(masks[k].dtype) for i, k in enumerate(names)}
        return image, masks

    def intensity(self, image: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        c = self.cfg
        x = image.float().clamp(0.0, 1.0)
        if _chance(c.clahe, g):
            x = clahe(x, clip_factor=_uniform(1.5, 4.0, g))
        # Gamma log-uniform, so darkening and brightening are equally likely around 1.
        lo, hi = math.log(c.gamma[0]), math.log(c.gamma[1])
        x = x.pow(math.exp(_uniform(lo, hi, g)))
        contrast = _uniform(c.contrast[0], c.contrast[1], g)
        x = (x - x.mean()) * contrast + x.mean()
        x = x + _uniform(-c.brightness, c.brightness, g)
        sigma = _uniform(0.0, c.noise_std, g)
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=g)
        return x.clamp_(0.0, 1.0)
