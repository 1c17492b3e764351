"""Joint training of the CryoPoseNet encoder and volume, and amortized pose inference.

Each step (Nashed et al., ICCV-W 2021, with the follow-ups of
:mod:`cryopose.models.cryoposenet`):

1. a batch of normalised working-box images ``Y`` is encoded into ``H`` pose hypotheses (and,
   with the symmetrised loss, ``Y`` turned by 180° into ``H`` more, mapped back by
   ``diag(−1, −1, 1)``);
2. the volume is Fourier-transformed once (:meth:`VoxelVolume.prepare`), sliced at every
   candidate pose, multiplied by the particle's CTF and shifted to its origin;
3. during the search warm-up (the first ``search_fraction`` of the steps), a global grid search
   against the current volume adds each image's best grid pose as one more candidate
   (:mod:`cryopose.training.pose_search`); with a shift head (origins being estimated) the
   search also tries origin offsets of ±1 working pixel, the candidate carries the winning
   offset, and where it wins the shift head is pulled towards it;
4. the loss is the mean squared Fourier residual over ``1 <= |k| < r`` of each image's best
   candidate (:mod:`cryopose.training.losses`), ``r`` growing linearly from
   ``march_start · n/2`` to ``n/2`` over the first ``march_fraction`` of the steps (frequency
   marching, as cryoAI), plus, during the warm-up, ``distill_weight`` times the squared chordal
   distance of the encoder's nearest hypothesis to the winning pose;
5. Adam updates encoder (``lr``) and volume (``volume_lr``) together, both rates following a
   cosine from 1 to ``lr_final_fraction`` of their value over the run.

The batch order comes from one seeded ``torch.Generator``; a checkpoint (written atomically at
the end of every epoch and when training is interrupted with Ctrl-C) holds the model, the
optimiser, the generator state, the permutation of the current epoch and the position in it,
so ``resume`` continues the same run: an interrupted-and-resumed run ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.dataset import ParticleBatch, ParticleDataset
from ..data.streaming import iter_batches
from ..fourier import centered_fft2
from ..models.cryoposenet import CryoPoseNet
from ..distributed import average_gradients, weighted_sum
from ..errors import UserError
from ..runtime import Runtime
from .checkpoint import save_checkpoint
from .config import TrainingConfig
from .losses import best_candidate_loss, fourier_residuals, frequency_band_mask
from .inference import PoseInference, band_residuals, candidate_poses, infer_poses  # re-exported
from .pose_search import GridSearcher, distillation_loss

__all__ = ["Trainer", "PoseInference", "candidate_poses", "infer_poses", "march_radius", "lr_factor", "idle_cores",
           "estimate_volume_scale", "band_residuals"]


@torch.no_grad()
def estimate_volume_scale(dataset: ParticleDataset, *, n_images: int = 512, radius_fraction: float = 0.35,
                          peak_factor: float = 3.0) -> float:
    """Density scale of the data: the map value that parameter 1 of the volume stands for.

    A soft ball of radius ``radius_fraction · n/2`` and density 1 is projected (the same
    projection at every pose), multiplied by each particle's CTF and fitted to up to
    ``n_images`` images by least squares over ``1 <= |k| < n/4``; the fitted density ``a``
    (an average density of a particle of that size) times ``peak_factor`` is returned. With it
    the volume parameters are O(1) whatever the image normalisation, CTF and box, so Adam's
    per-voxel steps (``volume_lr``) reach the map in tens of steps (measured on β-gal at 32 px:
    the scale 1/n used before left the map 30× too small for hundreds of steps and let the
    encoder collapse onto one viewing direction).

    Returns:
        A positive float (``|a| · peak_factor``; a negative ``a`` means dark particles, see
        :class:`cryopose.training.config.AbinitioConfig.invert_contrast`).
    """
    from ..projection import prepare_volume_ft, slice_volume_ft
    from ..models.volume import spherical_mask

    n = dataset.box_size
    idx = np.linspace(0, len(dataset) - 1, min(len(dataset), n_images)).round().astype(np.int64)
    batch = dataset.batch(np.unique(idx))
    ball = spherical_mask(n, radius_fraction * n / 2.0)
    proj = slice_volume_ft(prepare_volume_ft(ball), torch.eye(3)[None])[0] / n
    pred = proj[None] if batch.ctf is None else batch.ctf * proj[None]
    if batch.shifts_px is not None:
        from ..projection import origin_phases

        pred = pred * origin_phases(batch.shifts_px, n)
    target = centered_fft2(batch.images) / n
    mask = frequency_band_mask(n, n / 4.0)
    num = ((target.conj() * pred).real * mask).sum()
    den = ((pred.real.square() + pred.imag.square()) * mask).sum().clamp_min(1e-20)
    a = float(num / den)
    return max(abs(a), 1e-6) * peak_factor


def lr_factor(step: int, total_steps: int, config: TrainingConfig) -> float:
    """Learning-rate multiplier at ``step``: cosine from 1 to ``lr_final_fraction``."""
    f = config.lr_final_fraction
    if f >= 1.0 or total_steps <= 1:
        return 1.0
    t = min(1.0, step / (total_steps - 1))
    return f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * t))


def idle_cores(own_load: float = 1.0) -> int:
    """CPU cores not busy with other processes, >= 1.

    ``cpu_count − round(load − own_load)`` with ``load`` the 1-minute load average and
    ``own_load`` this process's share of it (its threads while it has been computing).
    Intra-op threads that share a busy core with other processes spin at OpenMP barriers; on a
    loaded 2-core machine a 2-thread training step was measured 12× slower than a 1-thread
    one, so the trainer uses only the idle cores unless the runtime's ``threads`` is set.
    """
    import os

    n = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return n
    return int(max(1, min(n, n - round(max(0.0, load - own_load)))))


def march_radius(step: int, total_steps: int, box_size: int, config: TrainingConfig) -> float:
    """Loss radius (cycles per box) at ``step``: linear from ``march_start · n/2`` to ``n/2``."""
    nyq = box_size / 2.0
    r0 = config.march_start * nyq
    span = config.march_fraction * total_steps
    frac = 1.0 if span <= 0 else min(1.0, step / span)
    return r0 + (nyq - r0) * frac


def _predict(model: CryoPoseNet, vft, batch, rot: torch.Tensor, shifts: torch.Tensor | None) -> torch.Tensor:
    """Predicted transforms ``(B, C, n, n)`` of every candidate (shift corrections per candidate)."""
    if shifts is None:
        return model.render(vft, rot, ctf=batch.ctf, shifts_px=batch.shifts_px)
    b, c = rot.shape[:2]
    base = batch.shifts_px if batch.shifts_px is not None else torch.zeros(b, 2, device=rot.device)
    total = (base[:, None] + shifts).reshape(b * c, 2)
    ctf = None if batch.ctf is None else batch.ctf.repeat_interleave(c, dim=0)
    pred = model.render(vft, rot.reshape(b * c, 1, 3, 3), ctf=ctf, shifts_px=total)
    return pred.reshape(b, c, *pred.shape[-2:])


class Trainer:
    """Optimise a :class:`CryoPoseNet` on a :class:`ParticleDataset`.

    Args:
        model: The network and volume (its volume ``scale`` already set).
        dataset: Working-box particles.
        config: :class:`TrainingConfig`.
        checkpoint_path: Where to write the checkpoint (``None``: never).
        checkpoint_extra: Extra entries stored in every checkpoint (run config, normalisation).
        progress: Show a tqdm progress bar with the running loss.
        on_epoch_end: Called as ``f(trainer)`` after each epoch's checkpoint.
        symmetry: Point group imposed on the volume (for the search warm-up's targets).
        runtime: Device, threads and precision (:class:`cryopose.runtime.Runtime`; default: the
            CPU, the idle cores, float32). The model is moved to ``runtime.device``; the batch
            order and search generators stay on the CPU (the same draws on every device). None
            of it is stored in the checkpoint's config, so a run resumes with other settings.
            Under ``torchrun`` (``runtime.world_size > 1``) every rank trains on its share of
            each batch (the same permutation on every rank) with the gradients averaged
            (:func:`cryopose.distributed.average_gradients`), so all ranks hold the same model;
            rank 0 alone writes the checkpoint. Batch norms are synchronised across GPUs
            (``SyncBatchNorm``); on CPUs (Gloo) each rank normalises with its own share's
            statistics, so a batch-norm encoder trains slightly differently than in one process.
    """

    def __init__(self, model: CryoPoseNet, dataset: ParticleDataset, config: TrainingConfig, *,
                 checkpoint_path: str | Path | None = None, checkpoint_extra: dict | None = None,
                 progress: bool = True, on_epoch_end: Callable[["Trainer"], None] | None = None,
                 symmetry: str = "C1", runtime: Runtime | None = None):
        self.runtime = Runtime() if runtime is None else runtime
        self.runtime.check_training_precision("abinitio")
        self.device = self.runtime.device
        if self.runtime.world_size > 1 and config.batch_size < self.runtime.world_size:
            raise UserError(f"--batch-size {config.batch_size}: smaller than the {self.runtime.world_size} processes")
        if self.runtime.world_size > 1 and self.device.type == "cuda":  # batch statistics over all GPUs
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        self.model, self.dataset, self.config = model, dataset, config
        self.symmetry = symmetry
        self.search_generator = torch.Generator().manual_seed(config.seed + 7919)
        self.searcher = None
        if config.search_fraction > 0:
            offsets = None
            if model.shift_head is not None:  # origins being estimated: search ±1 px around them too
                o = torch.tensor([-1.0, 0.0, 1.0])
                offsets = torch.stack(torch.meshgrid(o, o, indexing="xy"), dim=-1).reshape(-1, 2)
            self.searcher = GridSearcher(dataset.box_size, step_deg=config.search_step_deg, symmetry=symmetry,
                                         max_radius=config.search_radius_fraction * dataset.box_size / 2.0,
                                         generator=self.search_generator, shift_offsets_px=offsets)
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.optimizer = torch.optim.Adam([
            {"params": model.encoder_parameters(), "lr": config.lr},
            {"params": list(model.volume.parameters()), "lr": config.volume_lr},
        ])
        self.generator = torch.Generator().manual_seed(config.seed)
        if config.epochs is None:
            from .config import auto_epochs

            config = dataclasses.replace(config, epochs=auto_epochs(len(dataset)))
            self.config = config
        self.steps_per_epoch = max(1, len(dataset) // config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.epoch = 0
        self.position = 0  # batches done in the current epoch
        self.step = 0
        self.permutation: torch.Tensor | None = None
        self.history: dict[str, list] = {"step": [], "epoch": [], "loss": [], "radius": [], "seconds": []}
        self.epoch_losses: list[float] = []
        self.elapsed = 0.0

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything needed to continue the run (see the module docstring)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "search_generator": self.search_generator.get_state(),
            "epoch": self.epoch,
            "position": self.position,
            "step": self.step,
            "permutation": self.permutation,
            "history": self.history,
            "epoch_losses": self.epoch_losses,
            "elapsed": self.elapsed,
            **self.checkpoint_extra,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state written by :meth:`state_dict` (for ``--resume``)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if "search_generator" in state:
            self.search_generator.set_state(state["search_generator"])
        self.epoch, self.position, self.step = int(state["epoch"]), int(state["position"]), int(state["step"])
        self.permutation = state["permutation"]
        self.history = state["history"]
        self.epoch_losses = list(state["epoch_losses"])
        self.elapsed = float(state.get("elapsed", 0.0))

    def save(self) -> Path | None:
        """Write the checkpoint atomically (no-op without ``checkpoint_path`` and on ranks > 0)."""
        if self.checkpoint_path is None or self.runtime.rank != 0:
            return None
        return save_checkpoint(self.checkpoint_path, self.state_dict())

    @property
    def finished(self) -> bool:
        """All epochs done."""
        return self.epoch >= self.config.epochs

    # ---------------------------------------------------------------- training
    def _rank_chunks(self, bs: int) -> tuple[list[np.ndarray], list[float]]:
        """This rank's part of each remaining batch of the epoch and its share of the batch."""
        rank, world = self.runtime.rank, self.runtime.world_size
        chunks, shares = [], []
        for p in range(self.position, self.steps_per_epoch):
            full = self.permutation[p * bs:(p + 1) * bs].numpy()
            part = np.array_split(full, world)[rank]
            chunks.append(part)
            shares.append(part.size / full.size)
        return chunks, shares

    def train_step(self, indices, share: float = 1.0) -> tuple[float, float]:
        """One optimisation step on the given particles; returns ``(loss, radius)``.

        Args:
            indices: Particle positions, or the :class:`~cryopose.data.dataset.ParticleBatch`
                already read (moved to the trainer's device here).
            share: Under ``torchrun``, this rank's fraction of the global batch: the gradients
                and the loss are averaged over the ranks with these weights
                (:func:`cryopose.distributed.average_gradients`).
        """
        n = self.dataset.box_size
        batch = indices if isinstance(indices, ParticleBatch) else self.dataset.batch(np.asarray(indices))
        batch = batch.to(self.device)
        radius = march_radius(self.step, self.total_steps, n, self.config)
        mask = frequency_band_mask(n, radius, device=self.device)
        target = centered_fft2(batch.images) / n
        scale = lr_factor(self.step, self.total_steps, self.config)
        for group, base in zip(self.optimizer.param_groups, (self.config.lr, self.config.volume_lr)):
            group["lr"] = base * scale
        rot, shifts = candidate_poses(self.model, batch.images, symmetric=self.config.symmetric_loss,
                                      precision=self.runtime.precision)
        vft = self.model.volume.prepare()
        searching = self.searcher is not None and self.step < self.config.search_fraction * self.total_steps
        if searching and self.config.search_mode == "replace":
            loss = self._search_replace_loss(batch, vft, target, mask, radius, rot, shifts)
        else:
            cands, cand_shifts = rot, shifts
            if searching:
                found = self.searcher(vft, target, batch.ctf, batch.shifts_px, radius)
                cands = torch.cat([rot, found[:, None]], dim=1)
                if shifts is not None:
                    off = self.searcher.last_shift_offsets
                    off = torch.zeros_like(shifts[:, 0]) if off is None else off
                    cand_shifts = torch.cat([shifts, off[:, None]], dim=1)
            loss, best = self._best_candidate_loss(vft, batch, cands, cand_shifts, target, mask)
            if searching:
                winner = cands[torch.arange(cands.shape[0], device=cands.device), best]
                loss = loss + self.config.distill_weight * distillation_loss(rot, winner, symmetry=self.symmetry)
                if shifts is not None and self.searcher.last_shift_offsets is not None:
                    # where the search's pose won, the shift head is taught its origin offset too
                    # (squared working px over the bound², so that it weighs like the rotations')
                    won = (best == cands.shape[1] - 1).to(shifts.dtype)
                    err = (shifts[:, 0] - self.searcher.last_shift_offsets).square().sum(dim=1)
                    bound = float(self.model.shift_head.max_shift)
                    loss = loss + self.config.distill_weight * (won * err).mean() / bound ** 2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.model.parameters(), share, self.runtime.world_size)
        self.optimizer.step()
        return weighted_sum(float(loss.detach()), share, self.runtime.world_size), radius

    def _best_candidate_loss(self, vft, batch, cands, cand_shifts, target, mask):
        """The best-candidate loss and each image's best candidate (``(B,)``).

        Without the mean term (``hypothesis_mean_weight = 0``, the default) only each image's
        best candidate receives a gradient, so every candidate is scored without autograd and
        the winner alone is rendered again with it: the same loss and the same gradients as
        rendering all ``C`` candidates with autograd, with ``1/C`` of the slicing backward (the
        3D grid sampler's backward is the most expensive operation of a step on CPU).
        """
        if self.config.hypothesis_mean_weight > 0:
            residuals = fourier_residuals(_predict(self.model, vft, batch, cands, cand_shifts), target, mask)
            return best_candidate_loss(residuals, mean_weight=self.config.hypothesis_mean_weight)
        with torch.no_grad():
            residuals = fourier_residuals(_predict(self.model, vft, batch, cands, cand_shifts), target, mask)
        best = residuals.argmin(dim=1)
        rows = torch.arange(cands.shape[0], device=cands.device)
        win_shifts = None if cand_shifts is None else cand_shifts[rows, best][:, None]
        pred = _predict(self.model, vft, batch, cands[rows, best][:, None], win_shifts)
        return fourier_residuals(pred, target, mask)[:, 0].mean(), best

    def _search_replace_loss(self, batch, vft, target, mask, radius, rot, shifts) -> torch.Tensor:
        """Warm-up loss of ``search_mode="replace"``: the map learns from the search poses only
        (cryoSPARC's SGD ab initio), the encoder from its best candidate against the map held
        fixed plus the distillation towards the search pose."""
        from ..projection import VolumeFT

        found = self.searcher(vft, target, batch.ctf, batch.shifts_px, radius)
        pred_map = _predict(self.model, vft, batch, found[:, None], None)  # at the metadata's origins, as searched
        map_loss = fourier_residuals(pred_map, target, mask).mean()
        fixed = VolumeFT(vft.data.detach(), vft.box_size, vft.pad)
        enc_res = fourier_residuals(_predict(self.model, fixed, batch, rot, shifts), target, mask)
        enc_loss, _ = best_candidate_loss(enc_res, mean_weight=self.config.hypothesis_mean_weight)
        return map_loss + enc_loss + self.config.distill_weight * distillation_loss(rot, found, symmetry=self.symmetry)

    def train(self) -> None:
        """Run (or continue) training to ``config.epochs``.

        Writes the checkpoint after every epoch. On ``KeyboardInterrupt`` the state after the
        last completed step is written before the exception propagates, so ``resume`` picks
        up where the run stopped.
        """
        from tqdm import tqdm

        threads = torch.get_num_threads()
        bs = self.config.batch_size
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", desc="abinitio",
                   disable=not self.progress, dynamic_ncols=True)
        t_start = time.perf_counter() - self.elapsed
        self.model.train()
        try:
            while not self.finished:
                torch.set_num_threads(self.runtime.threads or idle_cores(torch.get_num_threads() if self.step else 1.0))
                if self.permutation is None:  # a new epoch's order (kept when resuming inside an epoch)
                    self.permutation = torch.randperm(len(self.dataset), generator=self.generator)
                running: list[float] = []
                chunks, shares = self._rank_chunks(bs)
                for batch, share in zip(iter_batches(self.dataset, chunks, self.runtime), shares):
                    # (one process: the one-argument call that callers may wrap)
                    loss, radius = self.train_step(batch) if share == 1.0 else self.train_step(batch, share)
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"the loss became {loss} at step {self.step}; "
                                                 "lower --lr or the volume learning rate")
                    self.position += 1
                    self.step += 1
                    running.append(loss)
                    self.elapsed = time.perf_counter() - t_start
                    if self.step % self.config.log_every == 0 or self.position == self.steps_per_epoch:
                        for key, value in (("step", self.step), ("epoch", self.epoch + self.position / self.steps_per_epoch),
                                           ("loss", float(np.mean(running[-self.config.log_every:]))),
                                           ("radius", radius), ("seconds", self.elapsed)):
                            self.history[key].append(value)
                    bar.update(1)
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4f}", radius=f"{radius:.1f}")
                self.epoch_losses.append(float(np.mean(running)) if running else float("nan"))
                self.epoch += 1
                self.position = 0
                self.permutation = None  # drawn at the next epoch's start, also after a resume from here
                self.save()
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self)
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            bar.close()
            torch.set_num_threads(threads)
