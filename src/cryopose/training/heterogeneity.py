"""Training of the pose-aware heterogeneity model (:mod:`cryopose.models.hetero_linear`).

Subspace iteration for the principal components of the 3D maps behind the images, the poses,
origins and CTFs held fixed (the covariance estimation of Andén & Singer 2018 and cryoSPARC's 3D
variability analysis, Punjani & Fleet 2021, solved here by power iteration with the project's
back-projector):

1. **Start**: ``V̄`` is the consensus map (all particles, half-map FSC-filtered reconstruction,
   :class:`~cryopose.reconstruction.Backprojector`); the basis ``U`` is seeded noise, low-pass
   filtered, masked and orthonormalised; ``σ²`` is the mean squared residual coefficient of
   ``V̄`` on the first batch.
2. **Each iteration** ("epoch"), one pass over the data: every particle's residual ``r_i = y_i −
   C_i φ_i P_i V̄`` and weights ``w_ij = ⟨C_i φ_i P_i U_j, r_i⟩`` (the current basis' slices);
   then ``U_j ← H⁻¹ Σ_i P_iᵀ C_i φ̄_i (w_ij r_i)`` — the image ``w_ij r_i`` inserted with its CTF
   into the ``j``-th back-projector (``H⁻¹`` its CTF²-weighted reconstruction with a fixed
   Tikhonov term, so that the step is linear), i.e. one application of the operator whose leading eigenvectors are the
   maps' principal components (the isotropic noise only adds ``σ²`` to every eigenvalue after
   whitening). The new maps are masked (soft sphere, radius ``0.9 · n/2``) and orthonormalised
   by an SVD after subtracting ``μ U`` (a shifted power iteration, ``μ`` = ``shift_fraction``
   times the smallest Rayleigh quotient of the current basis: the noise floor), ordered by how
   much the operator amplified them; ``similarity`` (mean cosine of the
   principal angles between the old and new subspaces) tracks convergence.
3. **Latents**: a least-squares pass gives ``z_i`` and its noise variance; the prior variance
   is ``τ_j² = var(z_j) − mean noise variance``, times ``(s_j − s_min) / s_j`` with ``s`` the
   last iteration's singular values (the part of the operator's spectrum above its noise floor:
   the basis is fitted to these particles, so the variance of a noise direction's ``z`` is
   inflated and only the spectrum tells it from signal; ``zdim`` should exceed the number of
   directions of real variation by one), floored at 1e-3 var; ``σ²`` is the mean squared
   residual; a second pass gives the posterior means
   (:meth:`cryopose.models.hetero_linear.LinearMaps.latents`), in the data set's order.

The checkpoint (after every iteration and on Ctrl-C) holds the maps, ``σ²``, the iteration, the
history and the half sets, so ``resume`` continues the run (:mod:`cryopose.training.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ..data.dataset import ParticleDataset
from ..models.hetero_linear import LinearMaps
from .checkpoint import HETEROGENEITY_FORMAT, save_checkpoint

__all__ = ["PoseAwareConfig", "HeteroTrainer", "build_pose_aware_model"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoseAwareConfig:
    """Options of the pose-aware variant (``cryopose heterogeneity train --variant pose-aware``).

    Attributes:
        zdim: Number of principal maps ``d``, the latent dimension (default 4: a mixture of up
            to 5 states, or several motions).
        box_size: Working box in pixels (images Fourier-cropped to it); ``None`` = the images'
            box up to 64.
        epochs: Subspace iterations (default 15).
        batch_size: Particles per batch (default 256; memory only).
        max_resolution_angstrom: Highest resolution of the basis maps and of the comparison in
            the latents, Å (default: the working Nyquist). A lower limit means fewer unknowns
            per map, which is what lets a weak variation stand out of the noise.
        whiten: Whiten images (and the CTFs) with the noise spectrum measured on the particles'
            background (:class:`cryopose.data.dataset.ParticleDataset`).
        shift_fraction: The power iteration is shifted by this fraction of the smallest Rayleigh
            quotient of the current basis (an estimate of the noise floor, with ``d`` larger
            than the number of directions of real variation): ``U ← M U − μ U`` (default 0.9;
            0 = plain power iteration, much slower at low SNR).
        tikhonov: Regulariser of the basis maps' reconstruction, ``V = D / (W + λ <W>_shell)``
            (default 0.1; :class:`cryopose.reconstruction.halfmaps.FilterOptions`).
        seed: Seeds the random start basis and the half sets.
        num_threads: Torch threads (``None``: the idle cores, as ``abinitio``).

    Raises:
        UserError: Values out of range.
    """

    zdim: int = 4
    box_size: int | None = None
    epochs: int = 15
    batch_size: int = 256
    max_resolution_angstrom: float | None = None
    whiten: bool = True
    shift_fraction: float = 0.9
    tikhonov: float = 0.1
    seed: int = 0
    num_threads: int | None = None

    def __post_init__(self):
        from ..errors import UserError

        for name in ("zdim", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.tikhonov > 0:
            raise UserError(f"tikhonov must be positive, got {self.tikhonov}")
        if not 0 <= self.shift_fraction < 1:
            raise UserError(f"shift fraction must be in [0, 1), got {self.shift_fraction}")
        if self.max_resolution_angstrom is not None and not self.max_resolution_angstrom > 0:
            raise UserError(f"max resolution must be positive Å, got {self.max_resolution_angstrom}")


def build_pose_aware_model(config: PoseAwareConfig, *, box_size: int, pixel_size_angstrom: float) -> LinearMaps:
    """An empty :class:`LinearMaps` for a working box and pixel size (Å)."""
    radius = None
    if config.max_resolution_angstrom is not None:
        radius = min(box_size / 2.0, box_size * pixel_size_angstrom / config.max_resolution_angstrom)
    return LinearMaps(box_size, config.zdim, max_radius=radius)


def _orthonormal(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal maps spanning ``maps`` ``(d, n, n, n)``, ordered by singular value; and the values."""
    flat = maps.reshape(maps.shape[0], -1).double()
    u, s, vt = torch.linalg.svd(flat, full_matrices=False)
    signs = torch.sign(vt.sum(dim=1, keepdim=True)).clamp_min(0) * 2 - 1  # a fixed sign per map
    return (vt * signs).float().reshape(maps.shape), s.float()


class HeteroTrainer:
    """Subspace iteration of :class:`LinearMaps` on a :class:`ParticleDataset` whose metadata hold the poses.

    Args:
        model: The model (filled by :meth:`initialise` unless resumed).
        dataset: Particles at the working box; ``dataset.metadata.rotmats`` are the poses.
        config: :class:`PoseAwareConfig`.
        checkpoint_path: Where :meth:`save` writes (``None``: never).
        checkpoint_extra: Plain entries stored with every checkpoint.
        progress: tqdm bar with the subspace similarity and ``σ²``.
    """

    def __init__(self, model: LinearMaps, dataset: ParticleDataset, config: PoseAwareConfig, *,
                 checkpoint_path: str | Path | None = None, checkpoint_extra: dict | None = None,
                 progress: bool = False):
        from ..models.volume import spherical_mask

        self.model, self.dataset, self.config = model, dataset, config
        self.rotmats = dataset.metadata.rotmats.float()
        self.generator = torch.Generator().manual_seed(int(config.seed))
        self.half_sets = torch.randint(0, 2, (len(dataset),), generator=self.generator)
        self.mask = spherical_mask(dataset.box_size, 0.9 * dataset.box_size / 2.0)
        self.lowpass = None
        if config.max_resolution_angstrom is not None:  # the basis maps are band-limited too
            n = dataset.box_size
            radius = min(n / 2.0, n * dataset.pixel_size_angstrom / config.max_resolution_angstrom)
            self.lowpass = torch.fft.ifftshift(spherical_mask(n, radius, width=2.0))
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.progress = progress
        self.epoch, self.elapsed = 0, 0.0
        self.history: list[dict] = []

    def _chunks(self):
        bs = int(self.config.batch_size)
        for s in range(0, len(self.dataset), bs):
            idx = torch.arange(s, min(s + bs, len(self.dataset)))
            yield idx, self.dataset.batch(idx.numpy())

    def _reconstruct(self, bp, *, linear: bool = False) -> torch.Tensor:
        """The map of a back-projector: FSC-filtered from half maps, or (``linear``) with the fixed
        Tikhonov regulariser ``config.tikhonov`` — a linear operator, as the power iteration needs
        (an FSC filter would damp a direction that is still mostly noise, signal included)."""
        from ..reconstruction.halfmaps import FilterOptions, finish_reconstruction

        if int(bp.n_inserted.min()) == 0:
            from ..errors import UserError

            raise UserError("too few particles for half maps (each half set needs at least one particle)")
        rec = finish_reconstruction(bp, self.dataset.pixel_size_angstrom, half_maps=not linear, symmetry="C1",
                                    half_source="given", options=FilterOptions(tikhonov=self.config.tikhonov))
        return rec.volume.float()

    def smooth_noise(self, k: int, generator: torch.Generator) -> torch.Tensor:
        """``k`` maps of seeded noise, low-pass filtered (Gaussian of σ = n/8 in frequency) and
        masked: the random start basis (and a typical smooth direction to compare with)."""
        from ..fourier import centered_fft3, centered_ifft3, frequency_indices

        n = self.dataset.box_size
        f = frequency_indices(n)
        kz, ky, kx = torch.meshgrid(f, f, f, indexing="ij")
        lowpass = torch.exp(-(kx**2 + ky**2 + kz**2) / (2 * (n / 8.0) ** 2))
        noise = torch.randn(k, n, n, n, generator=generator)
        return centered_ifft3(centered_fft3(noise) * lowpass).real * self.mask

    def band_limit(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps ``(k, n, n, n)`` low-passed to ``max_resolution_angstrom`` (if set) and masked, as
        every basis map is."""
        if self.lowpass is not None:
            maps = torch.fft.ifftn(torch.fft.fftn(maps, dim=(1, 2, 3)) * self.lowpass, dim=(1, 2, 3)).real
        return maps * self.mask

    @torch.no_grad()
    def initialise(self) -> None:
        """Consensus map, random start basis and ``σ²`` (step 1 of the module docstring)."""
        from ..reconstruction import Backprojector

        m, n = self.model, self.dataset.box_size
        bp = Backprojector(n, n_sets=2)
        for idx, b in self._chunks():
            bp.insert(b.images, self.rotmats[idx], shifts_px=b.shifts_px, ctf=b.ctf, sets=self.half_sets[idx])
        m.mean.copy_(self._reconstruct(bp))
        m.basis.copy_(_orthonormal(self.smooth_noise(m.zdim, self.generator))[0])
        idx, b = next(iter(self._chunks()))
        r, _ = m.residuals_and_slices(b.images, self.rotmats[idx], shifts_px=b.shifts_px, ctf=b.ctf)
        m.noise_variance.fill_(float((r**2).mean()))

    @torch.no_grad()
    def apply_operator(self, maps: torch.Tensor, bar=None) -> torch.Tensor:
        """The iteration's operator ``M`` applied to maps ``(k, n, n, n)`` → ``(k, n, n, n)``.

        ``M U_j = mask · lowpass · H⁻¹ Σ_i P_iᵀ C_i φ̄_i (⟨A_ij, r_i⟩ r_i) / 2P`` (step 2 of the
        module docstring; ``A_ij`` the CTF'd slice of ``U_j``, ``r_i`` the residual of the
        consensus map). ``U_jᵀ M U_j`` for a unit map is its Rayleigh quotient: the signal
        variance along ``U_j`` plus the noise's share, which is what the iteration compares
        (``benchmarks/hetero_operator.py`` evaluates it for the true principal maps).

        Args:
            maps: ``(k, n, n, n)`` maps on the working grid (any ``k``; the model's basis in
                :meth:`iterate`). Linear in them.
            bar: tqdm bar advanced by the particles done, or ``None``.

        Returns:
            ``(k, n, n, n)`` float32, band-limited and masked as the basis.
        """
        from ..fourier import centered_fft2
        from ..projection import prepare_volume_ft, project
        from ..reconstruction import Backprojector

        m, n = self.model, self.dataset.box_size
        bps = [Backprojector(n, n_sets=1) for _ in range(len(maps))]
        mean_ft = prepare_volume_ft(m.mean)
        for idx, b in self._chunks():
            rot = self.rotmats[idx]
            r, a = m.residuals_and_slices(b.images, rot, shifts_px=b.shifts_px, ctf=b.ctf, maps=maps)
            w = (a @ r[:, :, None])[..., 0] / m.n_coefficients  # (B, k)
            r_ft = centered_fft2(b.images) - project(mean_ft, rot, shifts_px=b.shifts_px, ctf=b.ctf,
                                                      return_fourier=True)
            for j, bp in enumerate(bps):
                bp.insert(r_ft * w[:, j, None, None].to(r_ft.dtype), rot, shifts_px=b.shifts_px, ctf=b.ctf,
                          fourier=True)
            if bar is not None:
                bar.update(len(idx))
        return self.band_limit(torch.stack([self._reconstruct(bp, linear=True) for bp in bps]))

    @torch.no_grad()
    def iterate(self, bar=None) -> dict:
        """One subspace iteration over the data set (step 2); returns its record."""
        m = self.model
        new = self.apply_operator(m.basis, bar)
        old = m.basis.reshape(m.zdim, -1).double()
        rayleigh = old @ new.reshape(m.zdim, -1).double().T
        shift = 0.0
        if m.zdim > 1:  # the noise floor: a shifted power iteration converges faster
            floor = float(torch.linalg.eigvalsh(0.5 * (rayleigh + rayleigh.T)).min())
            shift = max(0.0, self.config.shift_fraction * floor)
        basis, values = _orthonormal(new - shift * m.basis)
        cosines = torch.linalg.svdvals(m.basis.reshape(m.zdim, -1).double() @ basis.reshape(m.zdim, -1).double().T)
        m.basis.copy_(basis)
        record = {"epoch": self.epoch + 1, "similarity": float(cosines.mean()),
                  "singular_values": values.tolist(), "shift": shift}
        self.history.append(record)
        return record

    def train(self) -> None:
        """Run (or continue) to ``config.epochs`` iterations; checkpoint each one and on Ctrl-C."""
        from tqdm import tqdm

        from .trainer import idle_cores

        threads = torch.get_num_threads()
        n = len(self.dataset)
        bar = tqdm(total=n * self.config.epochs, initial=n * self.epoch, unit="img", desc="heterogeneity",
                   disable=not self.progress, dynamic_ncols=True)
        t0 = time.perf_counter() - self.elapsed
        try:
            torch.set_num_threads(self.config.num_threads or idle_cores(1.0))
            while self.epoch < self.config.epochs:
                rec = self.iterate(bar)
                self.epoch += 1
                self.elapsed = time.perf_counter() - t0
                bar.set_postfix(epoch=self.epoch, similarity=f"{rec['similarity']:.4f}",
                                sigma2=f"{float(self.model.noise_variance):.4g}")
                self.save()
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            bar.close()
            torch.set_num_threads(threads)

    @torch.no_grad()
    def latents(self) -> torch.Tensor:
        """Posterior-mean latents ``(N, d)`` float32 of every particle, in order (step 3)."""
        m = self.model
        n = len(self.dataset)
        z = torch.empty(n, m.zdim)
        noise = torch.zeros(m.zdim, dtype=torch.float64)
        residual = 0.0
        for idx, b in self._chunks():
            r, a = m.residuals_and_slices(b.images, self.rotmats[idx], shifts_px=b.shifts_px, ctf=b.ctf)
            z[idx] = m.latents(r, a, prior=False)
            residual += float(((r - (z[idx, None, :] @ a)[:, 0]) ** 2).sum())
            gram_inv = torch.linalg.pinv((a @ a.transpose(1, 2)).double())
            noise += gram_inv.diagonal(dim1=1, dim2=2).sum(0)
        m.noise_variance.fill_(residual / (n * m.n_coefficients))
        var = z.double().var(dim=0)
        tau2 = torch.maximum(var - float(m.noise_variance) * noise / n, 1e-3 * var)
        if self.history and m.zdim > 1:  # the operator's spectrum above its noise floor
            sv = torch.tensor(self.history[-1]["singular_values"], dtype=torch.float64)
            tau2 = torch.maximum(tau2 * ((sv - sv.min()) / sv).clamp_min(0.0), 1e-3 * var)
        m.prior_variance.copy_(tau2.float())
        for idx, b in self._chunks():
            r, a = m.residuals_and_slices(b.images, self.rotmats[idx], shifts_px=b.shifts_px, ctf=b.ctf)
            z[idx] = m.latents(r, a, prior=True)
        return z

    def state_dict(self) -> dict:
        """Plain checkpoint payload (model buffers, iteration, half sets, history, extras)."""
        return {**self.checkpoint_extra, "model": self.model.state_dict(), "epoch": self.epoch,
                "elapsed": self.elapsed, "half_sets": self.half_sets, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved (for ``--resume``)."""
        self.model.load_state_dict(state["model"])
        self.epoch, self.elapsed = int(state["epoch"]), float(state.get("elapsed", 0.0))
        self.half_sets = torch.as_tensor(state["half_sets"]).long()
        self.history = list(state.get("history", []))

    def save(self) -> None:
        """Write the checkpoint atomically (no-op without ``checkpoint_path``)."""
        if self.checkpoint_path is not None:
            save_checkpoint(self.checkpoint_path, self.state_dict(), format=HETEROGENEITY_FORMAT)
