"""Ab initio by expectation-maximisation with the poses marginalised over a grid: a map from
random poses, found without the encoder.

``abinitio``'s subset iterations (:mod:`cryopose.pipelines.polish_subset`) refine the map of
the encoder's poses. When the encoder has collapsed, that map is wrong in a way its own poses
fit: on 4AKE chain A (24 kDa, 20,000 realistic particles at SNR 0.1) the encoder put 93 % of
the particles within 12° of one view and the iterations stalled with the side views 83–103°
off (``docs/results/real-conditions.md``). Hard assignment — every particle at its best grid
pose — locks such a map in; from random poses it settled with the side views 140° off.
Marginalising over the poses, as RELION's maximum-likelihood refinement and initial model
(Scheres 2012, *J. Mol. Biol.* 415:406) and cryoSPARC's ab initio (Punjani et al. 2017) do,
lets the map form from every plausible pose at once while the low-resolution model cannot
yet tell them apart: from random poses, 20 iterations on 3,000 of those particles (67–80 s on
2 cores) found the map on 4 seeds of 4 (median pose error 10.5–12.3° on the 15° grid, 0.7–7.2 %
of the particles > 40° off), and the subset iterations take it on from there.

Model (RELION's, on a band of the image's centred transform, the half plane of
:class:`~cryopose.search.band.FourierBand`):

``log p(X_i | R_j, s) = Σ_k [a·Re(X_i(k) · conj(c_i(k) P_j(k) e_s(k))) − a² c_i(k)² |P_j(k)|² / 2] / σ²(|k|)``

with ``X_i`` the particle (mean-free inside a soft circular mask), ``c_i`` its CTF, ``P_j`` the
map's central slice at grid pose ``R_j`` (the :data:`GRID_STEP_DEG` grid of the point group's
asymmetric unit), ``e_s`` the phases of origin ``s`` (a lattice of :data:`SHIFT_STEP_PX` around
the particle's origin, radius ``shift_range_px``, Gaussian prior of s.d.
:data:`SHIFT_PRIOR_SIGMA_PX`), ``a`` one global scale (least squares at the best hypotheses) and
``σ²`` per shell the mean residual power at the best hypotheses (the first iteration: the
images' power, which makes the first posteriors broad), multiplied by a factor that falls
geometrically from ``initial_noise_factor`` to 1 over the band's growth (RELION's
``--sgd_sigma2fudge_initial``, 8 by default there too: broad posteriors for longer; on a
24-px test particle at SNR 1 it took one seed from 31.6° to 20.5°). Each iteration keeps the
:data:`TOP_HYPOTHESES` most probable ``(R_j, s)`` per particle, normalises their posterior
weights ``w``, and reconstructs the map from all of them (each inserted with image
``√w · X`` and CTF ``√w · c``, so that the accumulated data and weight are ``w c X`` and
``w c²``; half maps from a fixed split of the particles). The band grows from
``start_resolution_angstrom`` to ``final_resolution_angstrom`` over the first two thirds of the
iterations. The first map is the reconstruction from uniformly random poses (seeded).
"""

from __future__ import annotations

import dataclasses

import torch

from ..fourier import centered_fft2, radial_index_2d
from ..projection import origin_phases, prepare_volume_ft
from .band import make_band, origin_phases_band, slice_band, soft_circular_mask
from .grids import asymmetric_so3_grid, shift_lattice

__all__ = ["marginal_ab_initio", "MarginalResult", "GRID_STEP_DEG", "TOP_HYPOTHESES", "SHIFT_STEP_PX",
           "SHIFT_PRIOR_SIGMA_PX"]

#: Step of the rotation grid, degrees (4,608 poses in C1, 1,152 in D2).
GRID_STEP_DEG = 15.0

#: Hypotheses ``(pose, origin)`` kept per particle and iteration; the rest carry no weight.
TOP_HYPOTHESES = 20

#: Step of the origin lattice, pixels of the images given.
SHIFT_STEP_PX = 1.0

#: S.d. of the Gaussian prior on the origin's change, pixels (a picker's σ of 4 px at 128 px
#: is 1–1.5 px at the working boxes of 32–46 px).
SHIFT_PRIOR_SIGMA_PX = 2.0

#: Real numbers of the score blocks (particles × origins × poses) computed at once.
_BLOCK = 3_000_000


@dataclasses.dataclass(frozen=True)
class MarginalResult:
    """What :func:`marginal_ab_initio` returns.

    Attributes:
        rotmats: ``(N, 3, 3)`` float32 most probable pose of each particle (RELION matrices,
            the map's frame; the grid's resolution, :data:`GRID_STEP_DEG`).
        shifts_angstrom: ``(N, 2)`` float32 most probable origin in Å (RELION sign).
        reconstruction: The last iteration's :class:`~cryopose.reconstruction.ReconstructionResult`
            (the posterior-weighted map).
        resolutions_angstrom: Band limit of each iteration, Å.
        max_weights: Median over the particles of the largest posterior weight, per iteration
            (near ``1 / TOP_HYPOTHESES`` at first, near 1 once the poses are determined).
    """

    rotmats: torch.Tensor
    shifts_angstrom: torch.Tensor
    reconstruction: object
    resolutions_angstrom: tuple[float, ...]
    max_weights: tuple[float, ...]


def marginal_ab_initio(images: torch.Tensor, ctf, pixel_size_angstrom: float, *, symmetry: str = "C1",
                       shifts_angstrom: torch.Tensor | None = None, shift_range_px: float = 0.0,
                       iterations: int = 20, start_resolution_angstrom: float = 40.0,
                       final_resolution_angstrom: float = 15.0, mask_radius_fraction: float = 0.4,
                       initial_noise_factor: float = 8.0, seed: int = 0, threads: int = 1) -> MarginalResult:
    """Find a map and poses from random poses by expectation-maximisation (module docstring).

    Args:
        images: ``(N, n, n)`` particles (normalised; any contrast scale).
        ctf: :class:`~cryopose.ctf.CTFParams` of the ``N`` particles.
        pixel_size_angstrom: Å/px of the images.
        symmetry: Point group imposed on the maps (grid in its asymmetric unit).
        shifts_angstrom: ``(N, 2)`` starting origins in Å (RELION sign), or ``None`` (zero).
        shift_range_px: Radius of the origin lattice around them, pixels (0 = keep them).
        iterations: Iterations (≥ 1).
        start_resolution_angstrom, final_resolution_angstrom: The band's first and last limit,
            Å; the last is raised to 0.7 × Nyquist when that is coarser.
        mask_radius_fraction: Radius of the soft circular image mask, as a fraction of ``n``.
        initial_noise_factor: The first iteration's factor on σ² (≥ 1; 1 = none).
        seed: Seed of the random first poses and of the half sets.
        threads: Threads of the reconstructions.

    Returns:
        :class:`MarginalResult`.

    Raises:
        ValueError: If ``images`` is not ``(N, n, n)`` with ``N ≥ 2``, ``iterations < 1``, a
            resolution is not positive or ``initial_noise_factor < 1``.
    """
    from ..ctf import compute_ctf
    from ..reconstruction.backprojection import reconstruct_from_tensors
    from ..rotations_grids import random_rotations

    _check(images, iterations, (start_resolution_angstrom, final_resolution_angstrom), initial_noise_factor)
    n_img, n = images.shape[0], images.shape[-1]
    apix = float(pixel_size_angstrom)
    x = images.to(torch.float32)
    c = compute_ctf(ctf, n, apix).to(torch.float32)
    mask = soft_circular_mask(n, mask_radius_fraction * n)
    xm = (x - (x * mask).sum((-2, -1), keepdim=True) / mask.sum()) * mask
    origin = torch.zeros(n_img, 2) if shifts_angstrom is None else shifts_angstrom.float() / apix
    # Each particle's transform moved to its starting origin: hypotheses are changes of it.
    ft = centered_fft2(xm).reshape(n_img, -1) * origin_phases(origin, n).reshape(n_img, -1).conj()
    cf = c.reshape(n_img, -1)
    shell = radial_index_2d(n).round().long().reshape(-1).clamp_max(n // 2)
    noise = _shell_mean(ft.real**2 + ft.imag**2, shell, n // 2 + 1)
    lattice = shift_lattice(shift_range_px, SHIFT_STEP_PX) if shift_range_px > 0 else torch.zeros(1, 2)
    grid = asymmetric_so3_grid(GRID_STEP_DEG, symmetry)
    halves = torch.randperm(n_img, generator=torch.Generator().manual_seed(int(seed))) % 2

    def rebuild(rot, delta, weights, take):
        sw = weights.sqrt().float()
        return reconstruct_from_tensors(x[take] * sw[:, None, None], rot, (origin[take] + delta).float(),
                                        c[take] * sw[:, None, None], pixel_size_angstrom=apix, symmetry=symmetry,
                                        half_sets=halves[take], threads=threads)

    start = random_rotations(n_img, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
    rec = rebuild(start, torch.zeros(n_img, 2), torch.ones(n_img), torch.arange(n_img))
    final = max(float(final_resolution_angstrom), 2.0 * apix / 0.7)
    resolutions, max_weights = [], []
    best_j = best_s = None
    for it in range(int(iterations)):
        progress = min(1.0, 1.5 * it / max(1, int(iterations) - 1))
        res = float(start_resolution_angstrom) * (final / float(start_resolution_angstrom)) ** progress
        band = make_band(n, n * apix / res)
        fudge = float(initial_noise_factor) ** (1.0 - progress)
        vft = prepare_volume_ft(rec.volume.float())
        top_v, top_j, top_s, scale = _e_step(ft[:, band.flat_index], cf[:, band.flat_index], vft, grid, lattice,
                                             band, fudge * noise[shell[band.flat_index]])
        w = torch.softmax(top_v, dim=1)
        best_j, best_s = top_j[:, 0], top_s[:, 0]
        noise = _update_noise(noise, ft, cf, vft, grid[best_j], lattice[best_s], scale, shell, band, n)
        i_idx, m_idx = torch.nonzero(w > 1e-3, as_tuple=True)
        rec = rebuild(grid[top_j[i_idx, m_idx]], lattice[top_s[i_idx, m_idx]], w[i_idx, m_idx], i_idx)
        resolutions.append(res)
        max_weights.append(float(w[:, 0].median()))
    shifts = (origin + lattice[best_s]) * apix
    return MarginalResult(grid[best_j].float(), shifts.float(), rec, tuple(resolutions), tuple(max_weights))


def _check(images: torch.Tensor, iterations: int, resolutions: tuple, initial_noise_factor: float) -> None:
    """The ``ValueError`` of :func:`marginal_ab_initio` for bad input."""
    if images.ndim != 3 or images.shape[-1] != images.shape[-2] or images.shape[0] < 2:
        raise ValueError(f"images must be (N >= 2, n, n), got {tuple(images.shape)}")
    if int(iterations) < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if min(resolutions) <= 0:
        raise ValueError("resolutions must be positive")
    if initial_noise_factor < 1:
        raise ValueError(f"initial_noise_factor must be at least 1, got {initial_noise_factor}")


def _shell_mean(values: torch.Tensor, shell: torch.Tensor, n_shells: int) -> torch.Tensor:
    """Mean over particles and over each shell's frequencies of ``values (N, n²)``: ``(n_shells,)``."""
    total = torch.zeros(n_shells).index_add_(0, shell, values.mean(0).float())
    return total / torch.bincount(shell, minlength=n_shells).clamp_min(1)


def _e_step(x: torch.Tensor, c: torch.Tensor, vft, grid: torch.Tensor, lattice: torch.Tensor, band,
            noise: torch.Tensor):
    """The :data:`TOP_HYPOTHESES` best log-posteriors per particle over grid × lattice, against the
    prepared map ``vft`` (:func:`~cryopose.projection.prepare_volume_ft`).

    Returns ``(values (N, M), grid indices (N, M), lattice indices (N, M), scale a)``.
    """
    proj = torch.cat([slice_band(vft, grid[s:s + 4096], band)
                      for s in range(0, grid.shape[0], 4096)])  # (J, K)
    p_real = torch.cat([proj.real, proj.imag], -1)  # (J, 2K)
    p_power = proj.real**2 + proj.imag**2
    inv = 1.0 / noise.clamp_min(1e-30)
    xc = x * c * inv
    c2 = c * c * inv
    phases = origin_phases_band(lattice, band).conj()  # (S, K)
    prior = -(lattice**2).sum(1) / (2.0 * SHIFT_PRIOR_SIGMA_PX**2)
    n_img, n_s, n_j = x.shape[0], lattice.shape[0], grid.shape[0]
    step = max(1, _BLOCK // (n_s * n_j))

    def blocks():
        for i0 in range(0, n_img, step):
            y = xc[i0:i0 + step, None, :] * phases[None]  # (B, S, K)
            b = y.shape[0]
            cross = (torch.cat([y.real, y.imag], -1).reshape(b * n_s, -1) @ p_real.T).reshape(b, n_s, n_j)
            yield i0, cross, (c2[i0:i0 + step] @ p_power.T)[:, None, :]

    num = den = 0.0
    for _, cross, power in blocks():  # the scale at the best normalised cross-correlation
        flat = (cross / power.clamp_min(1e-30).sqrt()).reshape(cross.shape[0], -1).argmax(1, keepdim=True)
        num += float(cross.reshape(cross.shape[0], -1).gather(1, flat).sum())
        den += float(power.expand_as(cross).reshape(cross.shape[0], -1).gather(1, flat).sum())
    scale = max(num / max(den, 1e-30), 1e-6)
    values, indices = [], []
    for _, cross, power in blocks():
        # ×2: the band holds half of each Hermitian pair
        log_p = 2.0 * (scale * cross - 0.5 * scale**2 * power) + prior[None, :, None]
        v, k = log_p.reshape(cross.shape[0], -1).topk(min(TOP_HYPOTHESES, n_s * n_j), dim=1)
        values.append(v)
        indices.append(k)
    v, k = torch.cat(values), torch.cat(indices)
    return v, k % n_j, k // n_j, scale


def _update_noise(noise: torch.Tensor, ft: torch.Tensor, c: torch.Tensor, vft,
                  rot: torch.Tensor, delta: torch.Tensor, scale: float, shell: torch.Tensor, band, n: int):
    """σ² of the band's shells from the residuals at the best hypotheses; the others unchanged."""
    idx = band.flat_index
    model = scale * c[:, idx] * slice_band(vft, rot, band) \
        * origin_phases_band(delta, band)
    r = ft[:, idx] - model
    inside = torch.bincount(shell[idx], minlength=n // 2 + 1) > 0
    new = _shell_mean(r.real**2 + r.imag**2, shell[idx], n // 2 + 1)
    return torch.where(inside, new, noise)
