"""Pose-aware heterogeneity model: a consensus map plus a linear subspace of maps (3D PCA).

With every particle's rotation ``R_i``, origin ``s_i`` and CTF ``C_i`` known, particle ``i`` is
modelled as the projection of its own map ``V_i = V̄ + Σ_j z_ij U_j`` plus white Gaussian noise
(after whitening):

``y_i = C_i · φ_i · P_i(V̄ + U z_i) + n_i``,

with ``P_i`` the central slice at ``R_i`` read by the project's Fourier-slice projector (padding
2, gridding correction, trilinear interpolation: :func:`cryopose.projection.prepare_volume_ft`,
:func:`cryopose.projection.slice_coordinates`), ``φ_i`` the origin phases
(:func:`cryopose.projection.shifts.origin_phases`), compared over one half plane of frequencies
(each independent coefficient once; real and imaginary parts). The ``U_j`` (orthonormal over
the voxels) span the directions in which the maps of the data set vary most: the principal
components of the 3D maps, as in cryoSPARC's 3D variability analysis (Punjani & Fleet, J.
Struct. Biol. 2021) and the covariance estimation of Andén & Singer (2018). They are found by
subspace iteration (:mod:`cryopose.training.heterogeneity`). A particle's latent is the
posterior mean of ``z_i`` under a Gaussian prior ``N(0, diag τ²)``:

``z_i = (A_iᵀ A_i + σ² diag(τ⁻²))⁻¹ A_iᵀ (y_i − a_i)``,

``A_i`` the CTF'd slices of the ``U_j`` and ``a_i`` that of ``V̄`` (:meth:`LinearMaps.latents`).

**Why this model** (the pose-aware variant of issue 19): a discrete mixture of ``K`` states lies
in a ``K − 1``-dimensional affine subspace of maps and a linear morph ``(1 − t) A + t B =
A + t (B − A)`` on a line, so both are represented exactly with a small ``d`` and the latents
cluster (discrete) or order (morph) the particles; every frequency is weighed by what the
particle's CTF passes, so no network has to learn pose- or CTF-invariance; each iteration is one
pass of projection and of the project's tested back-projection, with no learning rate. Three
alternatives failed in exploratory runs on simulated EMPIAR-10076 mixtures at 32 px (commands
not recorded): the same subspace trained by Adam on the voxels (it learned no structure), ``K'``
maps with soft assignment (3D classification with fixed poses: a particle's own noise in its
class map froze the random start, and comparing with the other half set's maps made the labels
swap every iteration), and the power iteration with half-map FSC-filtered maps (the filter damps
a direction that is still mostly noise, so a random start never grew: hence the fixed Tikhonov
term). Measured numbers: ``docs/results/heterogeneity.md``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fourier import centered_fft2, frequency_indices
from ..projection import prepare_volume_ft
from ..projection.fourier_slice import sample_padded, slice_coordinates
from ..projection.shifts import origin_phases

__all__ = ["LinearMaps", "half_plane_mask", "slice_coefficients"]


def half_plane_mask(n: int, *, max_radius: float | None = None) -> torch.Tensor:
    """``(n, n)`` bool mask of one half of the centred frequency plane inside a radius.

    Keeps ``kx > 0``, or ``kx = 0`` and ``ky >= 0`` (each Hermitian pair ``±k`` once, DC
    included), with ``|k| < max_radius`` (cycles per box; default ``n / 2``, the projector's
    circle).
    """
    k = frequency_indices(n)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    radius = n / 2.0 if max_radius is None else float(max_radius)
    half = (kx > 0) | ((kx == 0) & (ky >= 0))
    return half & ((kx**2 + ky**2) < radius**2)


@torch.no_grad()
def slice_coefficients(maps: torch.Tensor, rotmats: torch.Tensor, coefficients: torch.Tensor, *,
                       shifts_px: torch.Tensor | None = None, ctf: torch.Tensor | None = None,
                       pad: int = 2) -> torch.Tensor:
    """CTF'd, shifted central slices of several maps at the kept frequencies.

    All maps are sliced by one ``grid_sample`` call (their padded transforms stacked as
    channels), at the coordinates of :func:`cryopose.projection.slice_coordinates`.

    Args:
        maps: ``(K, n, n, n)`` real maps ``(z, y, x)``.
        rotmats: ``(B, 3, 3)`` RELION rotation matrices.
        coefficients: ``(n, n)`` bool mask of the frequencies kept (:func:`half_plane_mask`).
        shifts_px: ``(B, 2)`` RELION origins in pixels (content drawn at ``−s``), or ``None``.
        ctf: ``(B, n, n)`` CTF (times any whitening filter) on the centred grid, or ``None``.
        pad: Padding factor.

    Returns:
        Real ``(B, K, 2P)``: real parts then imaginary parts of the ``P`` kept coefficients.
    """
    n = maps.shape[-1]
    fts = [prepare_volume_ft(m, pad=pad) for m in maps]
    data = torch.cat([f.data for f in fts], dim=1)  # (1, 2K, N, N, N)
    idx = slice_coordinates(rotmats.to(data.dtype), n, pad)[:, coefficients]  # (B, P, 3)
    out = sample_padded(data, idx[None, :, :, None])  # (1, 2K, B, P, 1)
    out = out[0, :, :, :, 0].reshape(len(maps), 2, *idx.shape[:2])  # (K, re/im, B, P)
    values = torch.complex(out[:, 0], out[:, 1]).transpose(0, 1)  # (B, K, P)
    flat = coefficients.reshape(-1)
    b = rotmats.shape[0]
    if ctf is not None:
        values = values * ctf.reshape(b, -1)[:, flat].to(values.dtype)[:, None, :]
    if shifts_px is not None:
        values = values * origin_phases(shifts_px.float(), n).reshape(b, -1)[:, flat][:, None, :]
    return torch.cat([values.real, values.imag], dim=-1)


class LinearMaps(nn.Module):
    """Consensus map ``V̄``, basis ``U`` ``(d, n, n, n)``, prior variances ``τ²`` and ``σ²``; buffers only.

    Args:
        box_size: Edge ``n`` of maps and images, pixels.
        zdim: ``d`` (>= 1).
        max_radius: Highest frequency compared, cycles per box (default ``n / 2``).

    Attributes:
        mean: ``(n, n, n)`` consensus map ``V̄``.
        basis: ``(d, n, n, n)`` orthonormal (over voxels) principal maps ``U_j``.
        prior_variance: ``(d,)`` ``τ_j²`` of the latents.
        noise_variance: ``σ²`` per real Fourier coefficient.
        coefficients: ``(n, n)`` bool half-plane mask of the frequencies compared.
    """

    def __init__(self, box_size: int, zdim: int, *, max_radius: float | None = None):
        super().__init__()
        if zdim < 1:
            raise ValueError(f"zdim must be >= 1, got {zdim}")
        n = int(box_size)
        self.box_size, self.zdim = n, int(zdim)
        self.register_buffer("mean", torch.zeros(n, n, n))
        self.register_buffer("basis", torch.zeros(self.zdim, n, n, n))
        self.register_buffer("prior_variance", torch.ones(self.zdim))
        self.register_buffer("noise_variance", torch.ones(()))
        self.register_buffer("coefficients", half_plane_mask(n, max_radius=max_radius))

    @property
    def n_coefficients(self) -> int:
        """``2P``: real numbers per image the model compares."""
        return 2 * int(self.coefficients.sum())

    def image_coefficients(self, images: torch.Tensor) -> torch.Tensor:
        """Real ``(B, 2P)`` coefficients of images ``(B, n, n)`` (layout of :func:`slice_coefficients`)."""
        ft = centered_fft2(images)[:, self.coefficients]
        return torch.cat([ft.real, ft.imag], dim=-1)

    @torch.no_grad()
    def residuals_and_slices(self, images: torch.Tensor, rotmats: torch.Tensor, *, shifts_px=None,
                             ctf=None, maps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y − a, A)``: residual coefficients ``(B, 2P)`` of the consensus map and the slices
        ``(B, k, 2P)`` of ``maps`` ``(k, n, n, n)`` (default the basis, ``k = d``)."""
        maps = torch.cat([self.mean[None], self.basis if maps is None else maps])
        s = slice_coefficients(maps, rotmats, self.coefficients, shifts_px=shifts_px, ctf=ctf)
        return self.image_coefficients(images) - s[:, 0], s[:, 1:]

    @torch.no_grad()
    def latents(self, residuals: torch.Tensor, slices: torch.Tensor, *, prior: bool = True) -> torch.Tensor:
        """Posterior means ``(B, d)`` (module docstring); ``prior=False``: least squares (``τ → ∞``)."""
        a = slices.double()
        gram = a @ a.transpose(1, 2)
        reg = torch.zeros(self.zdim, dtype=torch.float64)
        if prior:
            reg = float(self.noise_variance) / self.prior_variance.double().clamp_min(1e-12)
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)
        reg = torch.diag_embed(reg.expand(a.shape[0], -1) + 1e-6 * scale[:, None])
        rhs = (a @ residuals.double()[:, :, None])
        return torch.linalg.solve(gram + reg, rhs)[..., 0].float()

    def map_at(self, z: torch.Tensor) -> torch.Tensor:
        """Maps ``V̄ + Σ_j z_j U_j`` for latents ``z`` ``(..., d)`` → ``(..., n, n, n)``."""
        return self.mean + torch.einsum("...j,jzyx->...zyx", z.to(self.basis.dtype), self.basis)
