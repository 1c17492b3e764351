"""Losses of CryoPoseNet training, computed on centred image transforms.

The data term is the mean squared error between an image and its prediction, evaluated in
Fourier space (equal to the real-space MSE by Parseval when every frequency is kept) over the
frequencies ``1 <= |k| < r`` of the current frequency-marching radius ``r`` (cycles per box; the
DC term is left out because real images carry an arbitrary background offset). With several
candidate poses per image — hypotheses of a multi-head encoder and, with cryoAI's symmetrised
loss, the poses predicted for the image turned by 180° — each image keeps its best candidate
(``min`` over candidates, Levy et al. ECCV 2022 eq. 6; Shekarforoush et al. 2024), plus an
optional small weight on the mean over candidates so that no hypothesis stops learning.
"""

from __future__ import annotations

import torch

from ..fourier import frequency_grid_2d

__all__ = ["frequency_band_mask", "fourier_residuals", "best_candidate_loss", "candidate_posteriors",
           "direction_moment_penalty"]


def frequency_band_mask(box_size: int, radius: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(n, n)`` mask of centred frequencies with ``1 <= |k| < radius`` (cycles per box).

    Args:
        box_size: Image edge ``n`` in pixels.
        radius: Outer radius in cycles per box (``n / 2`` keeps everything but the corners).
    """
    ky, kx = frequency_grid_2d(box_size, device=device, dtype=dtype)
    r = torch.sqrt(kx * kx + ky * ky)
    return ((r >= 1.0) & (r < radius)).to(dtype)


def fourier_residuals(pred_ft: torch.Tensor, target_ft: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared residual per image and candidate over the masked frequencies.

    Args:
        pred_ft: ``(B, H, n, n)`` complex predicted transforms.
        target_ft: ``(B, n, n)`` complex image transforms (same normalisation).
        mask: ``(n, n)`` real weights (:func:`frequency_band_mask`).

    Returns:
        ``(B, H)`` real residuals ``Σ_k m_k |Y_k − P_k|² / Σ_k m_k``.
    """
    diff = pred_ft - target_ft[:, None]
    sq = diff.real.square() + diff.imag.square()
    return (sq * mask).sum(dim=(-2, -1)) / mask.sum().clamp_min(1.0)


def best_candidate_loss(residuals: torch.Tensor, *, mean_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss keeping each image's best candidate, and the index of that candidate.

    Args:
        residuals: ``(B, C)`` per-candidate residuals (:func:`fourier_residuals`).
        mean_weight: Weight ``ε`` of the mean over candidates added to the minimum.

    Returns:
        ``(loss, best)``: scalar ``mean_b [min_c r_bc + ε mean_c r_bc]`` and ``(B,)`` argmin.
    """
    best_val, best = residuals.min(dim=1)
    loss = best_val.mean()
    if mean_weight > 0 and residuals.shape[1] > 1:
        loss = loss + mean_weight * residuals.mean()
    return loss, best


def candidate_posteriors(residuals: torch.Tensor, n_frequencies: float, noise_variance: torch.Tensor | float) -> torch.Tensor:
    """Posterior probability of each candidate under white Gaussian noise, uniform prior.

    ``p_c ∝ exp(−N r_c / (2 σ²))`` with ``N`` the number of frequencies the residuals average
    over and ``σ²`` the noise variance per (normalised) Fourier coefficient.

    Args:
        residuals: ``(B, C)`` mean squared residuals.
        n_frequencies: ``N``.
        noise_variance: ``σ²`` (scalar or ``(B, 1)``), > 0.

    Returns:
        ``(B, C)`` probabilities summing to 1 over candidates.
    """
    logits = -0.5 * n_frequencies * residuals / torch.as_tensor(noise_variance, dtype=residuals.dtype).clamp_min(1e-12)
    return torch.softmax(logits, dim=1)


def direction_moment_penalty(rotmats: torch.Tensor) -> torch.Tensor:
    """Penalty on anisotropic viewing directions: ``‖E[d dᵀ] − I/3‖²_F`` over a batch.

    ``d = Rᵀ e_z`` (the third row of ``R``) is the viewing direction of a pose; for directions
    spread evenly over the sphere (or over any set with isotropic second moment: cube axes,
    a regular polyhedron's vertices, …) the mean outer product is ``I/3`` and the penalty is
    0; for poses collapsed onto one axis (every image a view from the same side, the planar
    local minimum in which the encoder only learns in-plane angles and the map becomes an
    extrusion of one 2D class) it is ``2/3``. Invariant to a global rotation of the poses.

    Args:
        rotmats: ``(B, 3, 3)`` poses.

    Returns:
        Scalar penalty (differentiable).
    """
    d = rotmats[:, 2, :]
    m = (d[:, :, None] * d[:, None, :]).mean(dim=0)
    eye = torch.eye(3, dtype=m.dtype, device=m.device) / 3.0
    return (m - eye).square().sum()
