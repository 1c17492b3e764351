"""Amortized pose inference with a trained CryoPoseNet: candidate poses, their scores, the best.

:func:`candidate_poses` encodes a batch into its candidate poses (the hypotheses, and with the
symmetrised loss those of the image turned by 180°); :func:`band_residuals` scores every
candidate by its Fourier residual against the image; :func:`infer_poses` runs both over a data
set on the runtime's device (streamed or cached, sharded under ``torchrun``) and keeps each
particle's best candidate with its confidence. Used by training (:mod:`cryopose.training.trainer`,
which re-exports these names), ``cryopose abinitio`` and ``cryopose predict``.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data.dataset import ParticleDataset
from ..data.streaming import iter_batches
from ..data.transforms import rotate_half_turn
from ..fourier import centered_fft2
from ..models.cryoposenet import CryoPoseNet, rotate_half_turn_poses
from ..rotations import geodesic_distance_deg
from ..runtime import Runtime
from .losses import candidate_posteriors

__all__ = ["PoseInference", "candidate_poses", "band_residuals", "infer_poses"]


def candidate_poses(model: CryoPoseNet, images: torch.Tensor, *, symmetric: bool, precision: str = "32"):
    """Candidate poses ``(B, C, 3, 3)`` and shift corrections of a batch.

    ``C = H`` hypotheses, or ``2H`` with the symmetrised loss: the poses of ``Y`` then those of
    ``R_π Y`` turned back (``diag(−1, −1, 1) @ R``). Shift corrections ``(B, C, 2)`` (working
    pixels; those of ``R_π Y`` negated) or ``None``. ``precision``: the encoder's autocast
    (:meth:`CryoPoseNet.encode`); the outputs are float32 whatever it is.
    """
    out = model.encode(images, precision=precision)
    rot, sh = out.rotmats, out.shifts_px
    h = rot.shape[1]
    shifts = None if sh is None else sh[:, None].expand(-1, h, 2)
    if symmetric:
        out2 = model.encode(rotate_half_turn(images), precision=precision)
        rot = torch.cat([rot, rotate_half_turn_poses(out2.rotmats)], dim=1)
        if sh is not None:
            shifts = torch.cat([shifts, -out2.shifts_px[:, None].expand(-1, h, 2)], dim=1)
    return rot, shifts


@dataclasses.dataclass(frozen=True)
class PoseInference:
    """Poses inferred for a data set.

    Attributes:
        rotmats: ``(N, 3, 3)`` best candidate pose per particle (RELION matrices).
        shifts_px: ``(N, 2)`` total origins in working pixels (metadata + correction), or
            ``None`` when neither the metadata nor the model gives shifts.
        confidence: ``(N,)`` posterior probability (white-noise likelihood, uniform prior over
            the candidates) of the chosen pose, counting candidates within ``merge_deg`` of it
            as the same pose.
        residual: ``(N,)`` mean squared Fourier residual of the chosen pose.
        noise_variance: The per-coefficient noise variance used for the posteriors.
    """

    rotmats: torch.Tensor
    shifts_px: torch.Tensor | None
    confidence: torch.Tensor
    residual: torch.Tensor
    noise_variance: float


def band_residuals(volume_ft, batch, rotmats: torch.Tensor, shift_corrections: torch.Tensor | None,
                   band) -> torch.Tensor:
    """Mean squared Fourier residual of every candidate pose, on the half-plane band.

    The same quantity as :func:`fourier_residuals` of :meth:`CryoPoseNet.render` over
    ``1 <= |k| < n/2`` (a real image's transform is Hermitian, so the mean over one half-plane
    equals the mean over the plane), read only at the band's frequencies
    (:func:`cryopose.search.band.slice_band`): about 2.5× cheaper than rendering whole slices.

    Args:
        volume_ft: The prepared volume.
        batch: :class:`cryopose.data.dataset.ParticleBatch` (images, CTF, origins in working px).
        rotmats: ``(B, C, 3, 3)`` candidate poses.
        shift_corrections: ``(B, C, 2)`` shift-head corrections (working px) or ``None``.
        band: :func:`cryopose.search.band.make_band` of the working box.

    Returns:
        ``(B, C)`` residuals.
    """
    from ..search.band import origin_phases_band, slice_band

    b = rotmats.shape[0]
    n = band.box_size
    flat = band.flat_index
    p = slice_band(volume_ft, rotmats, band) / n  # (B, C, K)
    if batch.ctf is not None:
        p = p * batch.ctf.reshape(b, -1)[:, flat].to(p.real.dtype)[:, None]
    total = None if batch.shifts_px is None else batch.shifts_px[:, None]
    if shift_corrections is not None:
        total = shift_corrections if total is None else total + shift_corrections
    if total is not None:
        p = p * origin_phases_band(total.to(p.real.dtype), band)
    y = (centered_fft2(batch.images) / n).reshape(b, -1)[:, flat]
    d = p - y[:, None]
    return (d.real.square() + d.imag.square()).mean(dim=-1)


@torch.no_grad()
def infer_poses(model: CryoPoseNet, dataset: ParticleDataset, *, symmetric: bool, batch_size: int = 256,
                merge_deg: float = 10.0, progress: bool = False, runtime: Runtime | None = None) -> PoseInference:
    """Amortized inference: encode every particle, keep its best candidate against the volume.

    Candidates are the model's hypotheses (and their 180°-turned counterparts with
    ``symmetric``); each is scored by its full-band Fourier residual against the image
    (:func:`band_residuals`). The confidence's likelihood counts the ``K`` independent
    coefficients of the half-plane band.

    Args:
        model: Trained model.
        dataset: Particles (training or unseen).
        symmetric: Also score poses of the images turned by 180° (as trained).
        batch_size: Images per forward pass.
        merge_deg: Candidates closer than this to the best count as the same pose in the
            confidence.
        progress: Show a progress bar.
        runtime: Device and precision (:class:`cryopose.runtime.Runtime`; default the CPU in
            float32): the model must already be on ``runtime.device``; batches are moved there
            (read through :func:`cryopose.data.streaming.iter_batches`, streamed or cached as
            the runtime says); the results come back on the CPU. Under ``torchrun``
            (``runtime.world_size > 1``) each rank infers its block of the particles
            (:func:`cryopose.distributed.shard`) and every rank gets all the results in the
            particles' order (the confidences use the noise level of the whole set, as in one
            process).

    Returns:
        :class:`PoseInference` (CPU tensors).
    """
    from tqdm import tqdm

    runtime = Runtime() if runtime is None else runtime
    dev = runtime.device
    was_training = model.training
    model.eval()
    n = dataset.box_size
    from ..search.band import make_band

    band = make_band(n, device=dev)
    vft = model.volume.prepare()
    rots, shifts, residuals, near = [], [], [], []
    from ..distributed import gather_in_order, shard

    order = shard(len(dataset), runtime.rank, runtime.world_size)  # all of them in one process
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for batch in tqdm(iter_batches(dataset, chunks, runtime), total=len(chunks), desc="poses", disable=not progress):
        rot, sh = candidate_poses(model, batch.images, symmetric=symmetric, precision=runtime.precision)
        res = band_residuals(vft, batch, rot, sh, band)
        best = res.argmin(dim=1)
        ar = torch.arange(rot.shape[0], device=dev)
        best_rot = rot[ar, best]
        rots.append(best_rot)
        residuals.append(res)
        near.append(geodesic_distance_deg(rot, best_rot[:, None]) < merge_deg)
        total = batch.shifts_px
        if sh is not None:
            corr = sh[ar, best]
            total = corr if total is None else total + corr
        if total is not None:
            shifts.append(total)
    model.train(was_training)
    cat = [None if not ts else torch.cat(ts).cpu() for ts in (rots, shifts, near, residuals)]
    rots, shifts, near, res = gather_in_order(cat, runtime.world_size)  # ranks' shards in particle order
    best_res = res.min(dim=1).values
    sigma2 = float(best_res.median().clamp_min(1e-12))
    post = candidate_posteriors(res, float(len(band)), sigma2)
    confidence = (post * near.to(post.dtype)).sum(dim=1)
    return PoseInference(rotmats=rots, shifts_px=shifts,
                         confidence=confidence, residual=best_res, noise_variance=sigma2)
