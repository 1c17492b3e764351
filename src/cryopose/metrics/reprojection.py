"""Reprojection error of estimated poses against a reference map (Lian et al. 2022, eq. 16).

Lian, Huang, Zhang & Ling, "End-to-end orientation estimation from 2D cryo-EM images", Acta
Cryst. D 78 (2022) judge predicted orientations by how different the reference's projections
along the predicted and the true orientation are: the root-mean-square difference of the two
CTF-free, noise-free projection images. Unlike a geodesic error it needs no knowledge of the
point group (projections along symmetry-equivalent orientations ``R`` and ``R S`` are
identical, :mod:`cryopose.symmetry`) and weighs errors by how much they change the image (an
error about the viewing axis of a nearly round view costs little).

Definition used here, for ``N`` particles of box ``n``::

    e_i  = sqrt( (1/n²) Σ_pixels (P(V, R_est,i) − P(V, R_ref,i))² ) / s
    RMSE = (1/N) Σ_i e_i

where ``P(V, R)`` is the Fourier-slice projection of :func:`cryopose.projection.project`
(RELION's projector, no CTF, no shift) and ``s`` a scale that makes maps comparable: with
``normalize=True`` (default) ``s`` is the RMS over pixels and particles of the reference
projections ``P(V, R_ref,i)`` (so ``e_i`` is a relative error, 0 for a perfect pose and about
``√2`` for unrelated views); with ``normalize=False``, ``s = 1`` (units of the map's
projections). The paper does not state its image scale, so only the normalised number is
comparable across maps; the per-particle average of RMSEs follows the paper's "mean over the
test set". This module imports no training code (:mod:`cryopose.metrics` rule).
"""

from __future__ import annotations

import dataclasses

import torch

from ..fourier import fourier_downsample_volume
from ..projection import prepare_volume_ft, project
from ..rotations import as_tensor

__all__ = ["ReprojectionResult", "reprojection_rmse"]


@dataclasses.dataclass(frozen=True)
class ReprojectionResult:
    """Output of :func:`reprojection_rmse`.

    Attributes:
        rmse: Mean over particles of the per-particle RMSE (relative if ``normalized``).
        median: Median per-particle RMSE.
        per_particle: ``(N,)`` float64 per-particle RMSE.
        scale: The divisor ``s`` applied (1.0 when not normalised).
        normalized: Whether ``s`` is the reference projections' RMS.
        box_size: Box of the projections compared (after optional downsampling).
    """

    rmse: float
    median: float
    per_particle: torch.Tensor
    scale: float
    normalized: bool
    box_size: int

    def as_dict(self) -> dict:
        """JSON-serialisable summary (no per-particle values)."""
        return {"reprojection_rmse": self.rmse, "reprojection_rmse_median": self.median,
                "reprojection_scale": self.scale, "reprojection_normalized": self.normalized,
                "reprojection_box_size": self.box_size, "n_particles": int(self.per_particle.shape[0])}


@torch.no_grad()
def reprojection_rmse(reference_volume, rot_est, rot_ref, *, normalize: bool = True, box_size: int | None = None,
                      global_rotation=None, chunk_size: int = 512) -> ReprojectionResult:
    """Reprojection RMSE between projections of a reference along estimated and reference poses.

    Args:
        reference_volume: ``(n, n, n)`` map ``(z, y, x)`` (tensor or array), origin ``n // 2``.
        rot_est: ``(N, 3, 3)`` estimated RELION rotation matrices.
        rot_ref: ``(N, 3, 3)`` reference (e.g. ground-truth) matrices, matched by index.
        normalize: Divide by the RMS of the reference projections (see the module docstring).
        box_size: Fourier-crop the map to this box first (faster; same field of view).
        global_rotation: Optional ``(3, 3)`` ``G`` from
            :func:`cryopose.metrics.pose_error.align_rotations` to apply to the estimates first
            (``R_est G``; for maps reconstructed in another frame). The hand is not changed.
        chunk_size: Particles projected at once.

    Returns:
        :class:`ReprojectionResult`.

    Raises:
        ValueError: If the pose sets differ in shape, are not ``(N, 3, 3)`` with ``N >= 1``,
            or the map is not a cube.
    """
    vol = as_tensor(reference_volume).to(torch.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"reference volume must be a cube (n, n, n), got {tuple(vol.shape)}")
    est = as_tensor(rot_est).to(torch.float32)
    ref = as_tensor(rot_ref).to(torch.float32)
    if est.shape != ref.shape or est.ndim != 3 or est.shape[1:] != (3, 3) or est.shape[0] < 1:
        raise ValueError(f"rot_est {tuple(est.shape)} and rot_ref {tuple(ref.shape)} must both be (N, 3, 3), N >= 1")
    if global_rotation is not None:
        est = est @ as_tensor(global_rotation).to(torch.float32)
    if box_size is not None and int(box_size) < vol.shape[-1]:
        vol = fourier_downsample_volume(vol, int(box_size))
    vft = prepare_volume_ft(vol)
    n = vol.shape[-1]
    errs, power = [], 0.0
    for start in range(0, est.shape[0], int(chunk_size)):
        p_est = project(vft, est[start:start + chunk_size])
        p_ref = project(vft, ref[start:start + chunk_size])
        errs.append(((p_est - p_ref) ** 2).mean((-2, -1)).double())
        power += float((p_ref.double() ** 2).mean((-2, -1)).sum())
    mse = torch.cat(errs)
    scale = float((power / est.shape[0]) ** 0.5) if normalize else 1.0
    per = mse.sqrt() / max(scale, 1e-30)
    return ReprojectionResult(rmse=float(per.mean()), median=float(per.median()), per_particle=per,
                              scale=scale, normalized=bool(normalize), box_size=int(n))
