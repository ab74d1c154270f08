"""A synthetic chest CT in Hounsfield units with known lung and infection masks, generated in code.

For tests, demos and smoke runs without patient data. The array uses the canonical layout of
:mod:`spikect.io.volume`: ``[z, y, x]`` with z inferior->superior, y anterior->posterior, x patient
right->left (radiological view). Anatomy is drawn in millimetres for a 358 mm field of view and scaled
to the requested one, and over the requested z extent (lung apex near the top, liver dome near the base),
so any shape/spacing gives a whole chest.

Contents: body (soft tissue ~40 HU, subcutaneous fat ~-100), ribs, spine and sternum (bone up to ~+700),
heart (~45, contrast blood pool ~+110), aorta/pulmonary trunk (~+120), trachea and bronchi (air), both lungs
(~-850, denser posteriorly) with a vessel tree (~+60 cores) thinning towards the periphery, a liver dome
and a stomach bubble under the diaphragm, a patient table, and COVID-like lesions: peripheral, mostly
posterior ground-glass opacities (~-450) and consolidations (~-20). Gaussian noise (~20 HU) on top.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from spikect.io.volume import atomic_output

_REF_HALF_FOV = 179.0  # mm: anatomy below is drawn for a 256 x 1.4 mm field of view
_REF_Z = 240.0  # mm: ... and a 48 x 5 mm craniocaudal extent

AIR, FAT, SOFT, MUSCLE, BLOOD, LIVER, BONE_CORTEX, BONE_MARROW = -1000, -100, 40, 50, 45, 58, 700, 250
LUNG, GGO, CONSOLIDATION, VESSEL = -850, -450, -20, 60


def make_phantom(
    shape: tuple[int, int, int] = (48, 256, 256),
    spacing: tuple[float, float, float] = (5.0, 1.4, 1.4),
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Synthesize a chest CT.

    Returns ``(hu, masks, affine)``: ``hu`` int16 ``[z, y, x]``; ``masks`` of the same shape, bool:
    ``body``, ``lung`` (both lungs, lesions included), ``right_lung``, ``left_lung``, ``infection``
    (ground glass + consolidation, inside ``lung``); ``affine`` the RAS affine of ``hu.transpose(2, 1, 0)``
    (index order x, y, z), centred on the origin.
    """
    nz, ny, nx = shape
    sz = float(spacing[0])
    rng = np.random.default_rng(seed)
    grid = _Grid(shape)
    x, y, t, zmm = grid.x, grid.y, grid.t, grid.zmm
    ellipse, zband = grid.ellipse, grid.zband

    hu = np.full(shape, float(AIR), dtype=np.float32)

    def put(where: np.ndarray, value: float | np.ndarray) -> None:
        np.copyto(hu, np.asarray(value, dtype=np.float32), where=where)  # broadcasts 2-D masks over z

    # Body: flatter at the back (lying on the table), a little irregular, shoulders wider at the top.
    top = np.clip((t - 0.8) / 0.2, 0, 1)
    width, depth = 156.0 + 14.0 * top, 110.0 - 8.0 * top
    angle = np.arctan2(y - 8, x)
    wobble = (
        1.0 + 0.02 * np.sin(3 * angle + rng.uniform(0, 6.3)) + 0.015 * np.cos(5 * angle + rng.uniform(0, 6.3))
    )
    back = np.clip((y - 8) / depth, 0, 1)  # 0 anterior half .. 1 at the back

    def shell(inset: float) -> np.ndarray:
        """Body-shaped level set shrunk by ``inset`` mm: <= 1 inside."""
        p = 2.0 + 1.2 * back
        return ((np.abs(x) / (width - inset)) ** p + (np.abs(y - 8) / (depth - inset * 0.8)) ** p) ** (
            2 / p
        ) / wobble

    body = np.broadcast_to(shell(0) <= 1, shape)
    put(body, FAT)
    fat_in = 10.0 + 6.0 * (y < 0)  # more subcutaneous fat in front
    put(shell(fat_in) <= 1, MUSCLE)
    rib_ring = 28.0
    cavity = shell(rib_ring + 6)  # inner surface of the ribs: lungs reach it
    put(cavity <= 1, SOFT)

    # Heart: a tilted ellipsoid pointing left-anterior-inferior, epicardial fat, contrast-filled chambers.
    hx, hy = x - 16, y + 28
    cos, sin = np.cos(0.55), np.sin(0.55)
    u, v = hx * cos + hy * sin, -hx * sin + hy * cos
    heart_t = ((t - 0.36) / 0.16) ** 2
    heart = (u / 62) ** 2 + (v / 44) ** 2 + heart_t
    put((ellipse(2, -18, 34, 60) <= 1) & zband(0.2, 0.82), FAT)  # mediastinal fat
    put(heart <= 1.2, FAT)
    put(heart <= 1, BLOOD)
    put(((u - 12) / 30) ** 2 + ((v + 6) / 22) ** 2 + heart_t <= 0.7, 130)  # left ventricle
    put(((u + 24) / 26) ** 2 + ((v - 12) / 20) ** 2 + heart_t <= 0.7, 110)  # right ventricle
    put((ellipse(10, 6, 26, 16) <= 1) & zband(0.38, 0.52), 120)  # left atrium, behind the heart
    aorta_desc = (ellipse(22, 50, 12, 12) <= 1) & zband(0.12, 0.8)
    aorta_asc = (ellipse(-8, -30, 15, 15) <= 1) & zband(0.5, 0.8)
    arch = (ellipse(7, 10, 22, 44) <= 1) & (ellipse(7, 10, 8, 30) > 1) & (y < 45) & zband(0.78, 0.83)
    pulm_trunk = (ellipse(14, -42, 13, 13) <= 1) & zband(0.52, 0.64)
    pulm_arteries = ((ellipse(-28, -16, 22, 8) <= 1) | (ellipse(32, -22, 18, 8) <= 1)) & zband(0.56, 0.62)
    great = aorta_desc | aorta_asc | arch | pulm_trunk | pulm_arteries
    put(great, 120)
    put((ellipse(4, 38, 7, 6) <= 1) & zband(0.1, 0.95), SOFT)  # oesophagus
    put((ellipse(4, 38, 2, 2) <= 1) & zband(0.1, 0.95), AIR)

    # Liver dome (right), spleen and stomach with a gas bubble (left) under the diaphragm.
    dome_r = ((x + 50) / 100) ** 2 + ((y + 2) / 95) ** 2 + ((zmm - 74 + 80) / 80) ** 2
    dome_l = ((x - 60) / 85) ** 2 + ((y - 5) / 90) ** 2 + ((zmm - 58 + 80) / 80) ** 2
    in_cavity = cavity <= 1
    put((dome_l <= 1) & in_cavity, SOFT + 5)
    put((dome_r <= 1) & in_cavity, LIVER)
    put((((x - 58) / 38) ** 2 + ((y + 28) / 26) ** 2 + ((zmm - 44) / 14) ** 2 <= 1) & in_cavity, AIR)

    # Lungs: fill the thoracic cavity above the domes, taper to the apices, spare the mediastinum.
    apex = np.sqrt(np.clip((0.97 - t) / 0.25, 0, 1))
    mediastinum = (
        (heart <= 1.35)
        | (ellipse(0, -24, 26 + 10 * (t < 0.55), 74) <= 1)
        | (ellipse(22, 50, 18, 18) <= 1)
        | ((ellipse(-8, -30, 21, 21) <= 1) & zband(0.5, 0.8))
        | (ellipse(0, 74, 30, 34) <= 1)  # spine and paravertebral gutter
        | ((ellipse(10, 8, 30, 20) <= 1) & zband(0.38, 0.52))
        | pulm_arteries
    )
    lungs = {}
    for name, side in (("right_lung", -1.0), ("left_lung", 1.0)):
        lung = (ellipse(70 * side, 6 - 12 * (1 - apex), 72 * apex + 1e-3, 100 * apex + 1e-3) <= 1) & in_cavity
        lung &= (dome_r > 1.1) & (dome_l > 1.1) & (t >= 0.08) & ~mediastinum
        lung &= (x < -4) if side < 0 else (x > 4)
        lungs[name] = lung
    lung_any = lungs["right_lung"] | lungs["left_lung"]
    put(lung_any, LUNG + 35.0 * (y / 90.0))  # dependent (posterior) lung is denser

    # Pulmonary vessels: arterial and venous trees from each hilum, tapering to the periphery.
    vessel = np.zeros(shape, dtype=np.float32)
    for side in (-1.0, 1.0):
        for hilum_x, hilum_y, hilum_t in ((38.0, -12.0, 0.56), (34.0, 12.0, 0.44)):
            root = np.array([side * hilum_x, hilum_y, hilum_t * _REF_Z])
            for lean_z in (-1.3, 0.0, 1.6):  # lower, middle and upper lobe branches
                for lean_y in (-0.8, 0.0, 0.8):  # anterior, lateral, posterior
                    _draw_tree(vessel, grid, rng, root, np.array([side, lean_y, lean_z]))
    hu += vessel * (VESSEL - LUNG) * lung_any

    # Airways: trachea down to the carina, main bronchi, each with a soft-tissue wall.
    trachea = (ellipse(0, -12, 10, 9) <= 1) & zband(0.6, 1.0)
    bronchi = ((ellipse(-24, -4, 6, 6) <= 1) | (ellipse(24, -2, 6, 6) <= 1)) & zband(0.5, 0.6)
    wall = ((ellipse(0, -12, 12, 11) <= 1) & zband(0.6, 1.0)) | (
        ((ellipse(-24, -4, 8, 8) <= 1) | (ellipse(24, -2, 8, 8) <= 1)) & zband(0.5, 0.6)
    )
    put(wall, SOFT)
    put(trachea | bronchi, AIR)
    lung_any &= ~(wall | trachea | bronchi)
    for lung in lungs.values():
        lung &= lung_any

    # Spine: vertebral bodies with discs, canal, lamina and spinous process; paraspinal muscle.
    put((ellipse(-32, 100, 22, 15) <= 1) | (ellipse(32, 100, 22, 15) <= 1), MUSCLE)
    disc = (zmm % 30.0) < 6.0
    vert = ellipse(0, 70, 19, 17)
    put((vert <= 1) & disc, 80)
    put((vert <= 1) & ~disc, BONE_CORTEX)
    put((vert <= 0.7) & ~disc, BONE_MARROW)
    lamina = (ellipse(0, 95, 15, 13) <= 1) & (y > 88)
    spinous = (np.abs(x) < 4) & (y > 100) & (y < 116)
    transverse = (np.abs(y - 90) < 4) & (np.abs(x) < 30) & (np.abs(x) > 8)
    put((lamina | spinous | transverse) & ~disc, BONE_CORTEX - 150)
    put(ellipse(0, 94, 8, 7) <= 1, 20)  # spinal canal

    # Ribs: oblique bands on the chest wall (posterior ends higher), so each slice cuts short arcs.
    ring = shell(rib_ring)
    rib_angle = np.arctan2(y - 8, x)
    rib_z = zmm + 55.0 * np.sin(rib_angle) + 8.0 * np.sin(3 * rib_angle)
    on_ring = np.abs(ring - 1) < 0.05
    rib = on_ring & ((rib_z % 36.0) < 11.0) & zband(0.16, 0.93) & (np.abs(x) > 34 - 8 * (y > 0))
    put(rib, BONE_MARROW + 150)
    put(rib & (np.abs(ring - 1) > 0.03), BONE_CORTEX)
    put((ellipse(0, -97, 17, 7) <= 1) & zband(0.35, 0.85), BONE_MARROW + 150)  # sternum
    lateral_back = np.abs(np.pi / 2 - rib_angle)  # 0 straight back .. pi/2 lateral
    scapula = (np.abs(shell(14) - 1) < 0.02) & (lateral_back > 0.45) & (lateral_back < 1.2)
    put(scapula & zband(0.6, 0.92), BONE_CORTEX - 100)

    # Lesions: peripheral, mostly posterior/basal COVID-like opacities with irregular edges.
    texture = ndimage.zoom(
        ndimage.gaussian_filter(
            rng.standard_normal((nz, ny // 4 + 1, nx // 4 + 1), dtype=np.float32), (0.6, 1.5, 1.5)
        ),
        (1, 4, 4),
        order=1,
    )[:nz, :ny, :nx]
    texture /= texture.std() + 1e-6
    infection = np.zeros(shape, dtype=bool)
    specs = [  # (x, y, t, radius_xy, radius_z mm, level)
        (-104, 60, 0.36, 40, 34, GGO),
        (108, 56, 0.30, 36, 30, GGO - 40),
        (-116, -20, 0.66, 30, 26, GGO + 60),
        (122, 10, 0.52, 28, 28, GGO),
        (-82, 84, 0.24, 24, 22, CONSOLIDATION),
        (76, 86, 0.44, 22, 24, CONSOLIDATION + 20),
    ]
    for cx, cy, ct, rxy, rz, level in specs:
        cx, cy = cx + rng.uniform(-6, 6), cy + rng.uniform(-6, 6)
        rxy *= rng.uniform(0.85, 1.15)
        d = ellipse(cx, cy, rxy, rxy * 0.8) + ((zmm - ct * 240.0) / rz) ** 2 + 0.3 * texture
        sharp = 0.08 if level > -200 else 0.3  # ground glass fades out, consolidation is crisp
        alpha = np.clip((1.0 - d) / sharp, 0.0, 1.0) * lung_any
        hu += alpha * (np.maximum(hu, level + 40.0 * texture) - hu)  # vessels stay visible in ground glass
        infection |= (alpha >= 0.5) & lung_any

    # Patient table under the body: a shallow curved tray.
    curve = 0.0006 * x**2
    table = ((np.abs(y - 134 + curve) < 2.5) | (np.abs(y - 150 + curve) < 2.0)) & (np.abs(x) < 150)
    put(table & ~body, 250)

    # Correlated noise, as from filtered back-projection, about 20 HU.
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0, 0.7, 0.7))
    hu += noise * (20.0 / (noise.std() + 1e-6))
    hu = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    masks = {
        "body": body.copy(),
        "lung": lung_any,
        "right_lung": lungs["right_lung"],
        "left_lung": lungs["left_lung"],
        "infection": infection,
    }
    sx, sy = float(spacing[2]), float(spacing[1])
    affine = np.diag([-sx, -sy, sz, 1.0])  # x -> L, y -> P, z -> S
    affine[:3, 3] = -affine[:3, :3] @ ((np.array([nx, ny, nz]) - 1) / 2.0)
    return hu, masks, affine


class _Grid:
    """Reference-millimetre coordinates of the voxel grid, broadcastable to ``shape``."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        nz, ny, nx = shape
        self.shape = shape
        self.mm_x, self.mm_y = 2 * _REF_HALF_FOV / nx, 2 * _REF_HALF_FOV / ny  # reference mm per voxel
        self.mm_z = _REF_Z / max(nz - 1, 1)
        self.x = ((np.arange(nx) - (nx - 1) / 2) * self.mm_x).astype(np.float32)[None, None, :]
        self.y = ((np.arange(ny) - (ny - 1) / 2) * self.mm_y).astype(np.float32)[None, :, None]
        self.t = (np.linspace(0.0, 1.0, nz) if nz > 1 else np.full(1, 0.5)).astype(np.float32)[:, None, None]
        self.zmm = self.t * _REF_Z
        self.slab = self.mm_z  # slice thickness in reference mm (contiguous slices: one z step)

    def ellipse(self, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        return ((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2  # <= 1 inside

    def zband(self, lo: float, hi: float) -> np.ndarray:
        return (self.t >= lo) & (self.t <= hi)

    def index(self, p: np.ndarray) -> np.ndarray:
        """Reference mm (x, y, z) -> fractional voxel index (z, y, x)."""
        nz, ny, nx = self.shape
        return np.array([p[2] / self.mm_z, p[1] / self.mm_y + (ny - 1) / 2, p[0] / self.mm_x + (nx - 1) / 2])


def _draw_tree(
    out: np.ndarray,
    grid: _Grid,
    rng: np.random.Generator,
    root: np.ndarray,
    heading: np.ndarray,
    generations: int = 6,
) -> None:
    """Rasterise a random bifurcating vessel tree growing from ``root`` roughly along ``heading``."""
    stack = [(root, heading + rng.uniform(-0.2, 0.2, 3), 3.5, 30.0, 0)]
    while stack:
        start, direction, radius, length, gen = stack.pop()
        direction = direction / np.linalg.norm(direction)
        end = start + direction * length
        _draw_segment(out, grid, start, end, radius)
        if gen + 1 >= generations:
            continue
        for _ in range(2):
            turn = rng.normal(0.0, 0.55, 3)
            outward = (end - root) / np.linalg.norm(end - root)
            child = direction + turn + 0.3 * outward  # keep growing away from the hilum
            stack.append((end, child, radius * 0.76, length * rng.uniform(0.7, 0.9), gen + 1))


def _draw_segment(out: np.ndarray, grid: _Grid, a: np.ndarray, b: np.ndarray, radius: float) -> None:
    """Tube of ``radius`` (reference mm) from a to b with a soft edge, averaged over the slice thickness."""
    reach = radius + 2.0 + grid.slab / 2
    lo = grid.index(np.minimum(a, b) - reach)
    hi = grid.index(np.maximum(a, b) + reach)
    z0, y0, x0 = (max(int(np.floor(v)), 0) for v in lo)
    z1, y1, x1 = (min(int(np.ceil(v)) + 1, n) for v, n in zip(hi, grid.shape, strict=True))
    if z0 >= z1 or y0 >= y1 or x0 >= x1:
        return
    px, py, pz = grid.x[:, :, x0:x1], grid.y[:, y0:y1, :], grid.zmm[z0:z1]
    ab = b - a
    s = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / float(ab @ ab)
    s = np.clip(s, 0.0, 1.0)
    dx, dy = px - (a[0] + s * ab[0]), py - (a[1] + s * ab[1])
    dz = np.maximum(np.abs(pz - (a[2] + s * ab[2])) - grid.slab / 2, 0.0)  # thick slices see the vessel
    d = np.sqrt(dx**2 + dy**2 + dz**2)
    # Partial volume: a vessel thinner than the slice contributes only part of its density.
    peak = min(1.0, 2.5 * radius / grid.slab)
    profile = peak / (1.0 + np.exp((d - radius) / 0.5))
    view = out[z0:z1, y0:y1, x0:x1]
    np.maximum(view, profile, out=view)


def write_phantom_nifti(
    path: str | Path,
    shape: tuple[int, int, int] = (48, 256, 256),
    spacing: tuple[float, float, float] = (5.0, 1.4, 1.4),
    seed: int = 0,
    masks: bool = True,
) -> dict[str, Path]:
    """Write the phantom as a RAS-oriented int16 NIfTI, plus ``<stem>_<mask>.nii.gz`` uint8 masks.

    Returns the written paths keyed ``"ct"`` and by mask name.
    """
    path = Path(path)
    hu, mask_arrays, affine = make_phantom(shape, spacing, seed)
    arrays: dict[str, np.ndarray] = {"ct": hu}
    if masks:
        arrays.update({k: v.astype(np.uint8) for k, v in mask_arrays.items()})
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    written: dict[str, Path] = {}
    for key, array in arrays.items():
        img = nib.as_closest_canonical(nib.Nifti1Image(array.transpose(2, 1, 0), affine))  # -> RAS storage
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
        img.header.set_xyzt_units("mm")
        target = path if key == "ct" else path.with_name(f"{stem}_{key}.nii.gz")
        with atomic_output(target) as tmp:
            nib.save(img, tmp)
        written[key] = target
    return written


def write_ct_nifti(
    path: str | Path,
    slices: int = 300,
    size: int = 512,
    spacing: tuple[float, float, float] = (1.0, 0.7, 0.7),
    render_size: int = 256,
    seed: int = 0,
) -> Path:
    """A ``slices`` x ``size``² int16 HU NIfTI of the phantom (no masks), for timing the whole pipeline.

    :func:`make_phantom` needs about 80 bytes per voxel (6 GB for 300 x 512²), so the anatomy is drawn at
    most ``render_size``² in-plane and enlarged bilinearly, slice block by slice block (1.6 GB for
    300 x 256²). The enlarged scan is smoother than a native one, which does not matter for timing.
    """
    path = Path(path)
    render = min(size, render_size)
    hu, _, _ = make_phantom(
        (slices, render, render), spacing=(spacing[0], *(s * size / render for s in spacing[1:])), seed=seed
    )
    if render != size:
        zoom = size / render
        big = np.empty((slices, size, size), dtype=np.int16)
        for a in range(0, slices, 32):  # bounded float32 temporaries
            block = ndimage.zoom(
                hu[a : a + 32].astype(np.float32), (1, zoom, zoom), order=1, mode="nearest", grid_mode=True
            )
            big[a : a + 32] = np.round(block[:, :size, :size])
        hu = big
    sz, sy, sx = (float(s) for s in spacing)
    affine = np.diag([-sx, -sy, sz, 1.0])  # as make_phantom's: x -> L, y -> P, z -> S
    affine[:3, 3] = -affine[:3, :3] @ ((np.array([size, size, slices]) - 1) / 2.0)
    img = nib.as_closest_canonical(nib.Nifti1Image(hu.transpose(2, 1, 0), affine))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_output(path) as tmp:
        nib.save(img, tmp)
    return path
