"""Training of the VAE-GAN latent model (Miolane et al., CVPR-W 2020, Sec. 3.1).

Loss of one minibatch of ``B`` images scaled to [0, 1] (:class:`ImageScaling`):

``L = L_rec + λ_reg · KL + λ_GAN · L_GAN + λ_cone · L_cone``

* ``L_rec``: binary cross-entropy between the decoder's sigmoid output and the image,
  **summed over pixels** and averaged over the batch (nats per image);
* ``KL = KL(N(μ, σ²) ‖ N(0, I))`` summed over the ``L`` latent dimensions, averaged over the
  batch;
* ``L_GAN``: the decoder's non-saturating GAN loss ``−log D(x̂) − log D(Dec(z_p))`` on the
  reconstructions ``x̂`` and on decodings of prior samples ``z_p ~ N(0, I)`` (VAE-GAN of Larsen
  et al. 2016). The discriminator is trained in alternation on ``−log D(x) − log(1 − D(x̂)) −
  log(1 − D(Dec(z_p)))``; with ``λ_GAN = 0`` the discriminator is not used (plain VAE);
* ``L_cone = mean (μ₁² + μ₂² − μ₃²)²`` on the latent means (the paper's cone prior);
* ``L_equi`` (an addition, ``λ_equivariance > 0``): the rotation-equivariance prior of
  :func:`cryopose.training.latent_losses.vaegan_losses` — an image turned by ``θ`` must have ``(μ₁, μ₂)`` turned by ``−kθ``
  and, by default (``L >= 5``), ``(μ₄, μ₅)`` by ``−2kθ`` (:meth:`LatentTrainConfig.equivariant_planes`).
  Without it (``λ_equivariance = 0``, the paper's model) the in-plane orbits are closed curves
  but rarely circles about the PCA axis in CPU-sized training runs (``benchmarks/inplane.py``).

The paper's code averages the BCE over pixels; here it is summed, so the paper's weights
correspond to ``λ · m²`` here (``m × m`` network inputs); see :class:`LatentTrainConfig`.

Optimiser Adam ``(β₁, β₂) = (0.9, 0.999)``, batch 16 (paper). The data set is split once
(seeded) into training and validation images; the validation loss (``L_rec + λ_reg KL +
λ_cone L_cone`` with ``z = μ``, the GAN and equivariance terms left out) is what
:func:`hyperparameter_search` (Optuna, optional extra ``cryopose[hpo]``) minimises — at
``λ_reg = 1`` so that trials compare on one scale — over the learning rate, decoder depth,
``λ_reg`` and ``λ_GAN``.

Images are read one batch at a time from any ``source`` with ``len()`` and
``source[index_array] -> (B, n, n)`` (a :class:`cryopose.io.particles.ParticleStack` or a
tensor), optionally Fourier-downsampled to ``train_box_size`` (a CPU-time choice; the paper
trains at the data's box) and contrast-inverted, then scaled to [0, 1] by the data set's
quantiles. Checkpoints (model, optimisers, epoch, history, random state) are written
atomically after every epoch and a run resumes from the last one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..errors import UserError
from ..fourier import fourier_downsample_images
from ..models.vaegan import VAEGAN, VAEGANConfig
from .latent_config import ImageScaling, LatentTrainConfig, LatentTrainResult
from .latent_losses import _discriminator_loss, vaegan_losses

__all__ = [
    "fit_scaling",
    "prepare_batch",
    "train_vaegan",
    "LatentCodes",
    "encode_latents",
    "reconstruct",
    "save_latent_checkpoint",
    "load_latent_checkpoint",
    "hyperparameter_search",
    "CHECKPOINT_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"


def _read(source, idx: np.ndarray) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        return source[torch.from_numpy(np.asarray(idx, dtype=np.int64))].to(torch.float32)
    return torch.as_tensor(source[np.asarray(idx, dtype=np.int64)], dtype=torch.float32)


def _preprocess(x: torch.Tensor, config: LatentTrainConfig) -> torch.Tensor:
    if x.ndim == 2:
        x = x[None]
    m = config.network_box(x.shape[-1])
    if m != x.shape[-1]:
        x = fourier_downsample_images(x, m)
    if config.invert_contrast:
        x = -x
    return x


def _mask(x: torch.Tensor, config: LatentTrainConfig) -> torch.Tensor:
    if config.mask_radius_fraction is None:
        return x
    from .inplane import circular_mask

    return x * circular_mask(x.shape[-1], radius_fraction=config.mask_radius_fraction, dtype=x.dtype)


def fit_scaling(source, config: LatentTrainConfig, *, indices: np.ndarray | None = None) -> ImageScaling:
    """Estimate :class:`ImageScaling` from the pixel quantiles of up to ``config.scaling_sample`` images.

    Raises:
        UserError: If the images are constant (no contrast to scale).
    """
    n = len(source)
    pool = np.arange(n) if indices is None else np.asarray(indices)
    rng = np.random.default_rng(config.seed)
    take = np.sort(rng.choice(pool, size=min(len(pool), int(config.scaling_sample)), replace=False))
    x = _preprocess(_read(source, take), config).flatten()
    if x.numel() > 4_000_000:
        x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(config.seed))[:4_000_000]]
    lo, hi = torch.quantile(x.double(), torch.tensor(config.scaling_quantiles, dtype=torch.float64)).tolist()
    if not hi > lo:
        raise UserError("the particle images have no contrast (constant pixel values); nothing to learn")
    return ImageScaling(low=float(lo), high=float(hi))


def prepare_batch(source, idx: np.ndarray, config: LatentTrainConfig, scaling: ImageScaling) -> torch.Tensor:
    """Read, downsample, invert (if asked), scale to [0, 1] and mask images ``idx``: ``(B, m, m)``.

    The mask multiplies the scaled image, so outside it the pixels are 0, the value that
    in-plane rotation (:func:`cryopose.data.transforms.rotate_images`) pads with.
    """
    return _mask(scaling.apply(_preprocess(_read(source, idx), config)), config)


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n)) if fraction > 0 else 0
    if n_val >= n:
        n_val = n - 1
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@torch.no_grad()
def _validate(model: VAEGAN, source, idx: np.ndarray, config: LatentTrainConfig, scaling: ImageScaling,
              batch_size: int = 256) -> dict[str, float]:
    if len(idx) == 0:
        return {"val_loss": math.nan, "val_rec": math.nan, "val_kl": math.nan, "val_cone": math.nan}
    was = model.training
    model.eval()
    sums = {"rec": 0.0, "kl": 0.0, "cone": 0.0}
    for start in range(0, len(idx), batch_size):
        part = idx[start:start + batch_size]
        out = vaegan_losses(model, prepare_batch(source, part, config, scaling), config)
        for k in sums:
            sums[k] += float(out[k]) * len(part)
    model.train(was)
    m = {k: v / len(idx) for k, v in sums.items()}
    total = m["rec"] + config.lambda_reg * m["kl"] + config.lambda_cone * m["cone"]
    return {"val_loss": total, "val_rec": m["rec"], "val_kl": m["kl"], "val_cone": m["cone"]}


def save_latent_checkpoint(path, result_or_state: dict) -> None:
    """Write a checkpoint dict atomically, as plain values tagged
    :data:`~cryopose.training.checkpoint.VAEGAN_FORMAT`
    (:func:`cryopose.training.checkpoint.save_checkpoint`: NumPy index arrays become int64
    tensors, which :func:`load_latent_checkpoint` turns back into arrays).

    Raises:
        TypeError: A value that cannot be stored as a plain value.
    """
    from .checkpoint import VAEGAN_FORMAT, save_checkpoint

    save_checkpoint(path, result_or_state, format=VAEGAN_FORMAT)


def _state(model: VAEGAN, opt_g, opt_d, *, config: LatentTrainConfig, scaling: ImageScaling, epoch: int,
           history: list, split: tuple[np.ndarray, np.ndarray], box_size: int, generator: torch.Generator) -> dict:
    return {
        "cryopose_version": __version__,
        "train_config": dataclasses.asdict(config),
        "model_config": dataclasses.asdict(model.config),
        "scaling": dataclasses.asdict(scaling),
        "model": model.state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict() if opt_d is not None else None,
        "epoch": epoch,
        "history": history,
        "train_indices": split[0],
        "validation_indices": split[1],
        "box_size": int(box_size),
        "generator_state": generator.get_state(),
    }


def load_latent_checkpoint(path) -> tuple[VAEGAN, ImageScaling, LatentTrainConfig, dict]:
    """Load a checkpoint written by :func:`train_vaegan`.

    Returns:
        ``(model in eval mode, scaling, train config, the raw checkpoint dict)``; in the dict,
        ``train_indices`` and ``validation_indices`` are int64 NumPy arrays.

    Raises:
        UserError: Missing file. InputFileError (a ``UserError``): an unreadable file, one that
            ``weights_only`` loading refuses (it could run code), or not a VAE-GAN checkpoint.
    """
    from .checkpoint import VAEGAN_FORMAT, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found (run `cryopose latent train` first)")
    ck = load_checkpoint(path, (VAEGAN_FORMAT,))
    for key in ("train_indices", "validation_indices"):
        ck[key] = np.asarray(ck[key], dtype=np.int64)
    tc = dict(ck["train_config"])
    config = LatentTrainConfig(**tc)
    model = VAEGAN(VAEGANConfig(**ck["model_config"]))
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ImageScaling(**ck["scaling"]), config, ck


def _resume(checkpoint_path, model: VAEGAN, opt_g, opt_d, gen: torch.Generator, *, config: LatentTrainConfig,
            box: int, n: int) -> tuple[ImageScaling, list[dict], int]:
    """Load a run's checkpoint into ``model``, the optimisers and ``gen``; return its scaling,
    history and epoch. ``UserError`` when it was trained on other data or with other options
    (only ``epochs`` may change)."""
    _, scaling, old_config, ck = load_latent_checkpoint(checkpoint_path)
    if ck["box_size"] != box or len(ck["train_indices"]) + len(ck["validation_indices"]) != n:
        raise UserError(f"{checkpoint_path}: checkpoint was trained on other data; use another output folder")
    if dataclasses.replace(old_config, epochs=config.epochs) != config:
        raise UserError(f"{checkpoint_path}: checkpoint was trained with other options; only --epochs may change")
    model.load_state_dict(ck["model"])
    opt_g.load_state_dict(ck["opt_g"])
    if opt_d is not None and ck["opt_d"] is not None:
        opt_d.load_state_dict(ck["opt_d"])
    gen.set_state(ck["generator_state"])
    return scaling, list(ck["history"]), int(ck["epoch"])


def _start_epoch(epoch: int, config: LatentTrainConfig, opt_g, opt_d) -> float:
    """Set the cosine-annealed learning rate of epoch ``epoch`` (0-based) on both optimisers
    and return that epoch's KL weight (``λ_reg``, ramped over ``kl_warmup_epochs``)."""
    frac = config.final_lr_fraction + (1 - config.final_lr_fraction) * 0.5 * (
        1 + math.cos(math.pi * epoch / config.epochs))
    for opt in (opt_g, opt_d):
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = config.learning_rate * frac
    lam_reg = config.lambda_reg
    if config.kl_warmup_epochs > 0:
        lam_reg *= min(1.0, (epoch + 1) / config.kl_warmup_epochs)
    return lam_reg


def _train_epoch(model: VAEGAN, opt_g, opt_d, source, order: np.ndarray, *, config: LatentTrainConfig,
                 scaling: ImageScaling, generator: torch.Generator, lambda_reg: float, steps: int, bar) -> dict:
    """``steps`` steps over the images ``order`` (batches of ``config.batch_size``): encoder and
    decoder, then the discriminator when there is one. Returns the summed loss terms."""
    sums = {"loss": 0.0, "rec": 0.0, "kl": 0.0, "cone": 0.0, "gan": 0.0, "equi": 0.0, "disc": 0.0}
    for s in range(steps):
        x = prepare_batch(source, np.sort(order[s * config.batch_size:(s + 1) * config.batch_size]), config, scaling)
        out = vaegan_losses(model, x, config, generator=generator, lambda_reg=lambda_reg)
        opt_g.zero_grad(set_to_none=True)
        out["total"].backward()
        opt_g.step()
        if opt_d is not None:
            dl = _discriminator_loss(model, x, out["recon"], out["prior"])
            opt_d.zero_grad(set_to_none=True)
            dl.backward()
            opt_d.step()
            sums["disc"] += float(dl.detach())
        sums["loss"] += float(out["total"].detach())
        for k in ("rec", "kl", "cone", "gan", "equi"):
            sums[k] += float(out[k].detach())
        bar.update(1)
    return sums


def train_vaegan(source, config: LatentTrainConfig, *, checkpoint_path=None, resume: bool = False,
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 trial_callback: Callable[[int, dict], None] | None = None) -> LatentTrainResult:
    """Train the VAE-GAN on particle images (Miolane et al. 2020, Sec. 3.1).

    Args:
        source: Images ``(N, n, n)``: a tensor or a :class:`~cryopose.io.particles.ParticleStack`
            (read a batch at a time).
        config: :class:`LatentTrainConfig`.
        checkpoint_path: Where to write the checkpoint after every epoch (atomic); ``None``
            writes none.
        resume: Continue from ``checkpoint_path`` if it exists (same data and config).
        progress: Show a tqdm progress bar over the steps.
        log: Called with one line per epoch.
        trial_callback: Called with ``(epoch, history row)`` after every epoch (Optuna
            pruning); may raise to stop.

    Returns:
        :class:`LatentTrainResult`.

    Raises:
        UserError: Fewer images than two batches, or a checkpoint that does not match.
    """
    n = len(source)
    train_idx, val_idx = _split(n, config.validation_fraction, config.seed)
    if len(train_idx) < 2 * config.batch_size:
        raise UserError(f"{n} images are too few to train with batch size {config.batch_size} "
                        f"(need at least {2 * config.batch_size} training images)")
    first = _read(source, np.array([0]))
    box = int(first.shape[-1])
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the global state left alone
        torch.manual_seed(config.seed)
        model = VAEGAN(config.model_config(box))
    params_g = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt_g = torch.optim.Adam(params_g, lr=config.learning_rate, betas=config.betas)
    opt_d = (torch.optim.Adam(model.discriminator.parameters(), lr=config.learning_rate, betas=config.betas)
             if config.lambda_gan > 0 else None)
    gen = torch.Generator().manual_seed(config.seed + 1)
    history: list[dict] = []
    start_epoch = 0
    scaling = None
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        scaling, history, start_epoch = _resume(checkpoint_path, model, opt_g, opt_d, gen, config=config, box=box, n=n)
    if scaling is None:
        scaling = fit_scaling(source, config, indices=train_idx)
    steps = len(train_idx) // config.batch_size
    from tqdm import tqdm

    bar = tqdm(total=steps * max(0, config.epochs - start_epoch), unit="step", desc="latent train",
               disable=not progress, leave=False)
    model.train()
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        order = train_idx[rng.permutation(len(train_idx))]
        lam_reg = _start_epoch(epoch, config, opt_g, opt_d)
        sums = _train_epoch(model, opt_g, opt_d, source, order, config=config, scaling=scaling, generator=gen,
                            lambda_reg=lam_reg, steps=steps, bar=bar)
        row = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}, "lambda_reg": lam_reg}
        row.update(_validate(model, source, val_idx, config, scaling))
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if log is not None:
            log(f"epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.4g} rec {row['rec']:.4g} "
                f"kl {row['kl']:.3g} cone {row['cone']:.3g} equi {row['equi']:.3g} val {row['val_loss']:.4g} ({row['seconds']:.1f} s)")
        if checkpoint_path is not None:
            save_latent_checkpoint(checkpoint_path, _state(model, opt_g, opt_d, config=config, scaling=scaling,
                                                           epoch=epoch + 1, history=history,
                                                           split=(train_idx, val_idx), box_size=box, generator=gen))
        if trial_callback is not None:
            trial_callback(epoch + 1, row)
    bar.close()
    model.eval()
    return LatentTrainResult(model=model, scaling=scaling, config=config, history=history,
                             train_indices=train_idx, validation_indices=val_idx, box_size=box)


@dataclasses.dataclass(frozen=True)
class LatentCodes:
    """Encoder outputs for every image of a data set.

    Attributes:
        mu: ``(N, L)`` float64 latent means.
        logvar: ``(N, L)`` float64 latent log-variances.
        reconstruction_loss: ``(N,)`` float64 BCE (nats, summed over pixels) of the decoding
            of ``μ`` against the image.
    """

    mu: np.ndarray
    logvar: np.ndarray
    reconstruction_loss: np.ndarray


@torch.no_grad()
def encode_latents(model: VAEGAN, source, config: LatentTrainConfig, scaling: ImageScaling, *,
                   batch_size: int = 256, progress: bool = False) -> LatentCodes:
    """Latent means, log-variances and reconstruction losses of every image of ``source``.

    Returns:
        :class:`LatentCodes`.
    """
    model.eval()
    n = len(source)
    mus, lvs, recs = [], [], []
    from tqdm import tqdm

    for start in tqdm(range(0, n, batch_size), desc="encode", unit="batch", disable=not progress, leave=False):
        idx = np.arange(start, min(n, start + batch_size))
        x = prepare_batch(source, idx, config, scaling)
        mu, lv = model.encoder(x)
        rec = F.binary_cross_entropy_with_logits(model.decoder(mu), x, reduction="none").flatten(1).sum(1)
        mus.append(mu.double())
        lvs.append(lv.double())
        recs.append(rec.double())
    return LatentCodes(mu=torch.cat(mus).numpy(), logvar=torch.cat(lvs).numpy(),
                       reconstruction_loss=torch.cat(recs).numpy())


@torch.no_grad()
def reconstruct(model: VAEGAN, source, idx: np.ndarray, config: LatentTrainConfig,
                scaling: ImageScaling) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, reconstructions)`` of images ``idx``, both ``(B, m, m)`` in [0, 1] (``z = μ``)."""
    model.eval()
    x = prepare_batch(source, np.asarray(idx), config, scaling)
    return x, torch.sigmoid(model(x)[0])


def hyperparameter_search(source, base: LatentTrainConfig, *, n_trials: int = 10, timeout_s: float | None = None,
                          search_space: dict | None = None, seed: int = 0,
                          log: Callable[[str], None] | None = None) -> tuple[LatentTrainConfig, list[dict]]:
    """Search the learning rate, decoder depth, ``λ_reg`` and ``λ_GAN`` on the validation loss (Optuna).

    Uses Optuna's TPE sampler (seeded) with median pruning per epoch. Optuna is an optional
    dependency (``pip install cryopose[hpo]``).

    Args:
        source: Images, as for :func:`train_vaegan`.
        base: Options kept fixed (epochs, latent dimension, ...).
        n_trials: Number of trials.
        timeout_s: Stop starting new trials after this many seconds.
        search_space: Overrides of the ranges ``{"learning_rate": (lo, hi), "lambda_reg": (lo, hi),
            "lambda_gan": (lo, hi), "extra_decoder_depth": (lo, hi)}`` (log-uniform for the first
            three, integers for the last).
        seed: Sampler seed.
        log: Called with one line per trial.

    Returns:
        ``(best config, one dict per trial)``.

    Raises:
        UserError: If Optuna is not installed, or no trial finished.
    """
    try:
        import optuna
    except ImportError:
        raise UserError("hyper-parameter search needs Optuna: pip install 'cryopose[hpo]' (or pip install optuna)") from None
    from ..models.vaegan import conv_plan

    space = {"learning_rate": (1e-4, 3e-3), "lambda_reg": (1e-3, 1e-1), "lambda_gan": (1e-3, 1.0),
             "extra_decoder_depth": (0, 2)}
    space.update(search_space or {})
    box = int(_read(source, np.array([0])).shape[-1])
    min_depth = len(conv_plan(base.network_box(box))) - 1
    trials: list[dict] = []

    def objective(trial):
        cfg = dataclasses.replace(
            base,
            learning_rate=trial.suggest_float("learning_rate", *space["learning_rate"], log=True),
            lambda_reg=trial.suggest_float("lambda_reg", *space["lambda_reg"], log=True),
            lambda_gan=trial.suggest_float("lambda_gan", *space["lambda_gan"], log=True),
            decoder_depth=min_depth + trial.suggest_int("extra_decoder_depth", *space["extra_decoder_depth"]),
        )

        def elbo(h):  # the validation loss with λ_reg = 1: one scale for every trial
            return h["val_rec"] + h["val_kl"] + base.lambda_cone * h["val_cone"]

        def report(epoch, row):
            trial.report(elbo(row), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        res = train_vaegan(source, cfg, progress=False, trial_callback=report)
        value = elbo(res.history[-1])
        trials.append({"number": trial.number, "value": value, **trial.params})
        if log is not None:
            log(f"trial {trial.number}: {value:.5g} {trial.params}")
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_warmup_steps=1))
    study.optimize(objective, n_trials=int(n_trials), timeout=timeout_s)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise UserError("hyper-parameter search: no trial finished (raise --hpo-trials or the timeout)")
    p = study.best_params
    best = dataclasses.replace(base, learning_rate=p["learning_rate"], lambda_reg=p["lambda_reg"],
                               lambda_gan=p["lambda_gan"], decoder_depth=min_depth + p["extra_decoder_depth"])
    return best, trials
