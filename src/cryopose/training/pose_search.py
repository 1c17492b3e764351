"""Global pose search against the volume being learned: the warm-up of CryoPoseNet training.

From a random start, the encoder and the volume of CryoPoseNet (Nashed et al., ICCV-W 2021)
have to agree on poses by gradient descent alone. With the first settings of this project
(paper learning rates, no batch norm, a volume scale of 1/n) that ended in local minima on
β-gal and 4AKE at SNR 0.1 (median errors of 40–130° after 12 epochs); with the present
defaults it converges on β-gal in C1, but less accurately than with the warm-up (the
benchmark's ablation, one seed: encoder 10.3° vs 8.3° median, after polishing 3.6° vs 2.6°).
The warm-up follows cryoSPARC's stochastic-gradient
ab initio (Punjani et al. 2017), cryoDRGN2 and cryoDRGN-AI (Levy et al. 2024: search first,
amortize later) and cryoSPIN (Shekarforoush et al. 2024): a global search — for each batch,
every image is compared with projections of the *current* volume on a near-uniform SO(3) grid
at low resolution, and the best grid pose becomes one more candidate of the best-candidate
loss. The encoder is taught that pose (:func:`distillation_loss`), so after the warm-up it
carries the poses alone, and inference stays one forward pass.

:class:`GridSearcher` draws a fresh random rotation of the grid at every call (the grid's
orientation bias then averages out, as cryoSPARC's randomised grids), scores every image
against every grid projection by the white-noise residual on the half-plane band
``1 <= |k| <= r`` with the particle's CTF and origin, as two matrix products
(:mod:`cryopose.search.band`), and returns the best pose — for a symmetric volume, its
symmetry mate in RELION's asymmetric unit, so that the encoder gets one consistent target.
"""

from __future__ import annotations

import torch

from ..projection import VolumeFT
from ..rotations import random_rotations, so3_grid
from ..search.band import make_band, origin_phases_band, slice_band
from ..symmetry import asymmetric_unit_mates, canonical_symbol, symmetry_operators

__all__ = ["GridSearcher", "distillation_loss"]


class GridSearcher:
    """Best pose of each image on a randomly rotated SO(3) grid, against a prepared volume.

    Args:
        box_size: Working box ``n`` (pixels) of images and volume.
        step_deg: Grid step (HEALPix × in-plane, :func:`cryopose.rotations.so3_grid`): 15° gives
            4,608 rotations, 30° gives 576.
        symmetry: Point group of the volume (RELION symbol); the winner is returned as its mate
            in the asymmetric unit.
        max_radius: Largest band radius searched, cycles per box (the search only has to be
            right to the grid's step; ``None`` = ``n / 4``).
        chunk: Grid rotations scored at a time (bounds memory: ``chunk × K`` complex samples).
        generator: Seeded source of the random grid rotations.
        shift_offsets_px: ``(S, 2)`` origin offsets (working pixels) searched jointly with the
            rotations around each image's origin, or ``None`` (only the origin). For particles
            without origins (cryoSPARC's and RELION's ab initio search translations too).

    Raises:
        ValueError: If ``step_deg`` is not positive or the box is below 8 px.
    """

    def __init__(self, box_size: int, *, step_deg: float = 15.0, symmetry: str = "C1",
                 max_radius: float | None = None, chunk: int = 4608, generator: torch.Generator | None = None,
                 shift_offsets_px: torch.Tensor | None = None):
        if not step_deg > 0:
            raise ValueError(f"search step must be positive, got {step_deg}")
        if box_size < 8:
            raise ValueError(f"search box must be at least 8 px, got {box_size}")
        self.box_size = int(box_size)
        self.grid = so3_grid(step_deg, dtype=torch.float32)
        self.symmetry = canonical_symbol(symmetry)
        self.max_radius = box_size / 4.0 if max_radius is None else float(max_radius)
        self.chunk = int(chunk)
        self.generator = generator
        self.shift_offsets_px = None if shift_offsets_px is None else torch.as_tensor(shift_offsets_px).float()
        self._bands: dict[tuple[float, str], object] = {}
        self.last_shift_offsets: torch.Tensor | None = None

    def _band(self, radius: float, device=None):
        r = max(2.0, min(float(radius), self.max_radius))
        r = round(r * 2) / 2  # half-cycle steps: few distinct bands to cache
        key = (r, str(torch.device(device or "cpu")))
        if key not in self._bands:
            self._bands[key] = make_band(self.box_size, r, device=device)
        return self._bands[key]

    @torch.no_grad()
    def __call__(self, volume_ft: VolumeFT, images_ft: torch.Tensor, ctf: torch.Tensor | None,
                 shifts_px: torch.Tensor | None, radius: float) -> torch.Tensor:
        """Best grid pose per image.

        Args:
            volume_ft: The current volume, prepared (:meth:`VoxelVolume.prepare`).
            images_ft: ``(B, n, n)`` complex centred transforms of the images (any common scale;
                the model's ``centered_fft2(images) / n``).
            ctf: ``(B, n, n)`` CTFs on the centred grid, or ``None``.
            shifts_px: ``(B, 2)`` RELION origins in pixels, or ``None``.
            radius: Band radius in cycles per box (capped at ``max_radius``).

        Returns:
            ``(B, 3, 3)`` RELION rotation matrices (float32). With ``shift_offsets_px``, the
            winning offset of each image is left in :attr:`last_shift_offsets` (``(B, 2)``).
        """
        dev = images_ft.device
        band = self._band(radius, dev)
        b = images_ft.shape[0]
        flat = band.flat_index
        y = images_ft.reshape(b, -1)[:, flat]
        c = torch.ones(b, len(band), device=dev) if ctf is None else ctf.reshape(b, -1)[:, flat].to(torch.float32)
        a = y.conj() * c
        if shifts_px is not None:
            a = a * origin_phases_band(shifts_px.to(torch.float32), band)
        offsets = None if self.shift_offsets_px is None else self.shift_offsets_px.to(dev)
        n_s = 1 if offsets is None else offsets.shape[0]
        if offsets is not None:  # (B, S, K): every image at every offset of its origin
            a = (a[:, None] * origin_phases_band(offsets, band)[None]).reshape(b * n_s, -1)
        a_mat = torch.cat([a.real, -a.imag], dim=1)  # Re(a · p) = a_r p_r − a_i p_i
        c2 = c * c
        # the random turn of the grid is drawn on the CPU (same draws on every device)
        q = random_rotations(1, generator=self.generator, dtype=torch.float32)[0]
        grid = (self.grid @ q).to(dev)
        best_score = torch.full((b,), float("inf"), device=dev)
        best_rot = torch.empty(b, 3, 3, device=dev)
        best_off = torch.zeros(b, 2, device=dev)
        scale = 1.0 / self.box_size
        for start in range(0, grid.shape[0], self.chunk):
            rots = grid[start:start + self.chunk]
            p = slice_band(volume_ft, rots, band) * scale  # (R, K)
            cross = (a_mat @ torch.cat([p.real, p.imag], dim=1).T).reshape(b, n_s, -1)  # (B, S, R)
            energy = c2 @ (p.real.square() + p.imag.square()).T
            score = (energy[:, None] - 2.0 * cross).reshape(b, -1)
            val, idx = score.min(dim=1)
            better = val < best_score
            best_score = torch.where(better, val, best_score)
            r_idx = idx % rots.shape[0]
            best_rot[better] = rots[r_idx[better]]
            if offsets is not None:
                best_off[better] = offsets[(idx // rots.shape[0])[better]]
        if offsets is not None:
            self.last_shift_offsets = best_off
        return asymmetric_unit_mates(best_rot, self.symmetry)



def distillation_loss(candidates: torch.Tensor, target: torch.Tensor, *, symmetry: str = "C1") -> torch.Tensor:
    """Squared chordal distance from each image's nearest candidate pose to a target pose.

    ``mean_b min_{c, g} ‖R_bc − T_b g‖²_F`` over the encoder's candidates ``c`` and the
    symmetry mates ``T g`` of the target (a symmetric volume projects the same at ``T`` and
    ``T g``). Only the nearest candidate is pulled, so the other hypotheses stay free
    (multiple-choice learning).

    Args:
        candidates: ``(B, C, 3, 3)`` poses from the encoder (differentiable).
        target: ``(B, 3, 3)`` target poses (not differentiated).
        symmetry: Point group of the volume.

    Returns:
        Scalar loss (``0 <= · <= 8``).
    """
    t = target.detach()
    if canonical_symbol(symmetry) != "C1":
        ops = symmetry_operators(symmetry, dtype=t.dtype, device=t.device)
        mates = t[:, None] @ ops[None]  # (B, G, 3, 3)
    else:
        mates = t[:, None]
    d = (candidates[:, :, None] - mates[:, None]).square().sum(dim=(-2, -1))  # (B, C, G)
    return d.flatten(1).min(dim=1).values.mean()
