"""Rotation-invariant autoencoder (Bibas et al. 2021) and spatial-VAE (Bepler et al. 2019):
in-plane rotation augmentation, losses, training and prediction.

**Rotation-invariant autoencoder** (:class:`cryopose.models.rotinv.RotInvAutoencoder`). Each
training image ``x`` (standardised, circularly masked) is turned by a random ``θ ~ U[0, 2π)``;
the encoder sees the (low-passed) turned image and must return ``θ`` and a content code from
which the decoder renders ``x`` itself, unrotated. Loss per image:

``L = λ_ang (exp(|θ − θ̂|) − 1) + λ_vec ‖v − (cos θ, sin θ)‖²``
``    + λ_img (‖x − x̂‖₂ + ‖x − x̂‖₁) / n + λ_W · (−D(c))``

with ``|θ − θ̂|`` the circular difference in [0, π], ``v`` the angle head's raw 2-vector
(``θ̂ = atan2(v_y, v_x)``), ``‖·‖`` norms over the ``n × n`` pixels
(divided by ``n`` so that they are per-pixel-row sized) and ``D`` the latent critic, trained
in alternation on ``D(c) − D(ε) + λ_GP (‖∇D‖ − 1)²`` with ``ε ~ N(0, I)`` (WGAN-GP, Gulrajani et
al. 2017). The periodic loss of the paper, convex in the circular error, is minimised half-way
between the two modes of an angle known only modulo 180° (a particle's axis before its
polarity is learned, near 2-fold views), which stalled training with errors clustered at ±90°;
the vector term (minimised by the conditional mean direction, i.e. the likelier mode) drives the
angle head, and the periodic term (``λ_ang``, small) joins after ``angle_warmup_fraction`` of the
epochs (:func:`rotinv_angle_objective`). The low-pass on the encoder input (``input_lowpass``, a fraction of Nyquist) hides
the texture that interpolation leaves in rotated noise, which would otherwise betray ``θ``
modulo 90°.

**spatial-VAE** (:class:`cryopose.models.spatial_vae.SpatialVAE`) is trained, unsupervised,
on the same turned images: ELBO with a Gaussian likelihood of standard deviation ``obs_std``
(standardised units), ``KL(q(z) ‖ N(0, I)) + KL(q(θ) ‖ N(0, σ_θ²))``.

Convention (checked against the projector in ``tests/unit/test_rotinv.py``):
``rotate_images(x, θ)`` turns the image content by ``+θ`` counter-clockwise in the ``(x, y)``
plane, ``x`` the column index and ``y`` the row index (both increasing away from the origin at
``n // 2``), i.e. ``out(r) = x(Q(−θ) r)`` with ``Q(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]``.
For projections, RELION's ``R = Rz(ψ) Ry(tilt) Rz(rot)`` makes the image of ``ψ`` the image of
``ψ = 0`` turned by ``−ψ``:

``project(V, R(rot, tilt, ψ)) = rotate_images(project(V, R(rot, tilt, 0)), −ψ)``,

so an image turned by ``θ`` has ``rlnAnglePsi`` decreased by ``θ``: ``ψ_new = ψ − θ``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..data.transforms import rotate_images
from ..errors import UserError
from .checkpoint import ROTINV_FORMAT, SPATIAL_VAE_FORMAT, load_checkpoint, save_checkpoint
from .inplane import circular_mask, lowpass_images, random_angles, spatial_vae_angle_to_theta, wrap_angle
from .rotinv_losses import _gradient_penalty, _spatial_vae_loss, angle_loss, image_loss, rotinv_angle_objective

__all__ = [
    "rotate_images", "Standardization", "RotInvTrainConfig",
    "fit_standardization", "prepare_images", "load_rotinv_checkpoint",
    "RotInvTrainResult", "train_rotinv", "train_spatial_vae", "RotInvPrediction", "predict_rotinv",
    "DownsampledSource",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Standardization:
    """Pixel standardisation ``(x − mean) / std`` of a data set (estimated on training images)."""

    mean: float
    std: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclasses.dataclass(frozen=True, kw_only=True)
class RotInvTrainConfig:
    """Training options shared by the rotation-invariant autoencoder and spatial-VAE.

    Attributes:
        epochs: Passes over the training images.
        batch_size: Images per step.
        learning_rate: Adam learning rate (cosine decay to ``final_lr_fraction`` of it).
        final_lr_fraction: See ``learning_rate``.
        lambda_angle: Weight of Bibas et al.'s periodic angle loss ``exp(|θ − θ̂|) − 1``.
        lambda_image: Weight of the image loss ``(‖x − x̂‖₂ + ‖x − x̂‖₁) / n``.
        lambda_vector: Weight of the angle head's vector loss ``‖v − (cos θ, sin θ)‖²``.
        angle_warmup_fraction: Fraction of the epochs trained without the periodic loss (the
            vector loss alone resolves the particle's polarity first).
        lambda_wasserstein: Weight of the critic term (0 = no critic).
        gradient_penalty: WGAN-GP weight ``λ_GP``.
        mask_radius_fraction: Circular mask radius (fraction of ``n/2``) applied to every image.
        input_lowpass: Low-pass of the encoder input, fraction of Nyquist (``None`` = off).
        invert_contrast: Negate the images first (dark particles).
        obs_std: spatial-VAE only: likelihood standard deviation (standardised units).
        seed: Seed of initialisation, batches and angles.

    Raises:
        UserError: Values out of range.
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    final_lr_fraction: float = 0.05
    lambda_angle: float = 0.1
    lambda_image: float = 1.0
    lambda_vector: float = 1.0
    angle_warmup_fraction: float = 0.5
    lambda_wasserstein: float = 0.01
    gradient_penalty: float = 10.0
    mask_radius_fraction: float | None = 1.0
    input_lowpass: float | None = 0.6
    invert_contrast: bool = False
    obs_std: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if int(self.epochs) < 1 or int(self.batch_size) < 2:
            raise UserError(f"need epochs >= 1 and batch size >= 2, got {self.epochs} and {self.batch_size}")
        if not (self.learning_rate > 0 and 0 < self.final_lr_fraction <= 1):
            raise UserError("learning rate must be > 0 and the final fraction in (0, 1]")
        for name in ("lambda_angle", "lambda_image", "lambda_vector", "lambda_wasserstein", "gradient_penalty"):
            if not getattr(self, name) >= 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.angle_warmup_fraction <= 1:
            raise UserError(f"angle_warmup_fraction must be in [0, 1], got {self.angle_warmup_fraction}")
        if self.lambda_angle == 0 and self.lambda_vector == 0:
            raise UserError("lambda_angle and lambda_vector are both 0: the angle head would not be trained")
        if self.input_lowpass is not None and not (0 < self.input_lowpass <= 1):
            raise UserError(f"input low-pass must be in (0, 1], got {self.input_lowpass}")
        if self.mask_radius_fraction is not None and not (0 < self.mask_radius_fraction <= 1.5):
            raise UserError(f"mask radius fraction must be in (0, 1.5], got {self.mask_radius_fraction}")
        if not self.obs_std > 0:
            raise UserError(f"obs_std must be positive, got {self.obs_std}")


def _read(source, idx: np.ndarray) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        return source[torch.from_numpy(np.asarray(idx, dtype=np.int64))].to(torch.float32)
    return torch.as_tensor(source[np.asarray(idx, dtype=np.int64)], dtype=torch.float32)


def fit_standardization(source, indices: np.ndarray, *, invert_contrast: bool = False, sample: int = 2048,
                        seed: int = 0) -> Standardization:
    """Mean and standard deviation of the pixels of up to ``sample`` images ``indices``.

    Raises:
        UserError: Constant images.
    """
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(np.asarray(indices), size=min(len(indices), sample), replace=False))
    x = _read(source, take).double()
    if invert_contrast:
        x = -x
    std = float(x.std())
    if not std > 0:
        raise UserError("the particle images have no contrast (constant pixel values); nothing to learn")
    return Standardization(mean=float(x.mean()), std=std)


def prepare_images(x: torch.Tensor, config: RotInvTrainConfig, standardization: Standardization) -> torch.Tensor:
    """Invert (if asked), standardise and mask images ``(B, n, n)``."""
    if config.invert_contrast:
        x = -x
    x = standardization.apply(x)
    if config.mask_radius_fraction is not None:
        x = x * circular_mask(x.shape[-1], radius_fraction=config.mask_radius_fraction, dtype=x.dtype)
    return x


def load_rotinv_checkpoint(path):
    """Load a checkpoint of :func:`train_rotinv` or :func:`train_spatial_vae`.

    Returns:
        ``(model in eval mode, kind, RotInvTrainConfig, Standardization, raw dict)``; ``kind`` is
        ``"rotinv"`` or ``"spatial_vae"``.

    Raises:
        UserError: Missing file. InputFileError (a ``UserError``): an unreadable file, one that
            ``weights_only`` loading refuses (it could run code), or a foreign file.
    """
    from ..models.rotinv import RotInvAutoencoder, RotInvConfig
    from ..models.spatial_vae import SpatialVAE, SpatialVAEConfig

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found (run `cryopose rotinv train` first)")
    ck = load_checkpoint(path, (ROTINV_FORMAT, SPATIAL_VAE_FORMAT))
    if ck["format"] == ROTINV_FORMAT:
        model = RotInvAutoencoder(RotInvConfig(**ck["model_config"]))
    else:
        model = SpatialVAE(SpatialVAEConfig(**ck["model_config"]))
    model.load_state_dict(ck["model"])
    model.eval()
    cfg = RotInvTrainConfig(**ck["train_config"])
    kind = "rotinv" if ck["format"] == ROTINV_FORMAT else "spatial_vae"
    return model, kind, cfg, Standardization(**ck["standardization"]), ck


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RotInvTrainResult:
    """Outcome of :func:`train_rotinv` / :func:`train_spatial_vae`."""

    model: torch.nn.Module
    kind: str
    config: RotInvTrainConfig
    standardization: Standardization
    history: list
    seconds: float


def _resume(checkpoint_path, kind: str, config: RotInvTrainConfig, model, opt, opt_c,
            gen: torch.Generator) -> tuple[Standardization, list, int]:
    """Load a run's checkpoint into ``model``, the optimisers and ``gen``; return its
    standardisation, history and epoch (``UserError`` for another model or other options)."""
    _, k, old_cfg, std, ck = load_rotinv_checkpoint(checkpoint_path)
    if k != kind or dataclasses.replace(old_cfg, epochs=config.epochs) != config:
        raise UserError(f"{checkpoint_path}: checkpoint was trained with another model or options")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    if opt_c is not None and ck.get("opt_c") is not None:
        opt_c.load_state_dict(ck["opt_c"])
    gen.set_state(ck["generator_state"])
    return std, list(ck["history"]), int(ck["epoch"])


def _save(checkpoint_path, kind: str, model, config: RotInvTrainConfig, std: Standardization, opt, opt_c, *,
          epoch: int, history: list, generator: torch.Generator) -> None:
    """Write the checkpoint of epoch ``epoch`` (1-based) atomically."""
    save_checkpoint(checkpoint_path, {
        "cryopose_version": __version__,
        "model_config": dataclasses.asdict(model.config), "train_config": dataclasses.asdict(config),
        "standardization": dataclasses.asdict(std), "model": model.state_dict(), "opt": opt.state_dict(),
        "opt_c": opt_c.state_dict() if opt_c is not None else None, "epoch": epoch, "history": history,
        "generator_state": generator.get_state(), "box_size": int(model.config.box_size)},
        format=ROTINV_FORMAT if kind == "rotinv" else SPATIAL_VAE_FORMAT)


def _step(kind: str, model, opt, opt_c, x: torch.Tensor, *, config: RotInvTrainConfig, epoch: int,
          generator: torch.Generator) -> dict[str, float]:
    """One training step on the standardised batch ``x`` ``(B, n, n)``, turned by random angles:
    the model (and, for ``rotinv`` with ``lambda_wasserstein > 0``, the latent critic ``opt_c``).
    Returns the loss terms of the step."""
    theta = random_angles(x.shape[0], generator=generator, dtype=x.dtype)
    x_in = rotate_images(x, theta)
    if kind == "rotinv":
        canon, theta_hat, code, vec = model(lowpass_images(x_in, config.input_lowpass))
        la, lv = rotinv_angle_objective(theta, vec, config, epoch)
        li = image_loss(x, canon)
        loss = la + lv + config.lambda_image * li
        parts = {"angle": float(angle_loss(theta, theta_hat).detach()), "vector": float(lv.detach()),
                 "image": float(li.detach())}
        if opt_c is not None:
            for p in model.critic.parameters():
                p.requires_grad_(False)
            adv = -model.critic(code).mean()
            for p in model.critic.parameters():
                p.requires_grad_(True)
            loss = loss + config.lambda_wasserstein * adv
            parts["adv"] = float(adv.detach())
    else:
        out = model(x_in, generator)
        terms = _spatial_vae_loss(out, x_in, model, config)
        loss = terms["total"]
        parts = {k: float(v.detach()) for k, v in terms.items() if k != "total"}
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if opt_c is not None:
        fake = code.detach()
        real = torch.randn(fake.shape, generator=generator, dtype=fake.dtype)
        lc = (model.critic(fake).mean() - model.critic(real).mean()
              + config.gradient_penalty * _gradient_penalty(model.critic, real, fake, generator))
        opt_c.zero_grad(set_to_none=True)
        lc.backward()
        opt_c.step()
        parts["critic"] = float(lc.detach())
    parts["loss"] = float(loss.detach())
    return parts


def _train(kind: str, source, model_config, config: RotInvTrainConfig, *, indices=None, checkpoint_path=None,
           resume: bool = False, progress: bool = True, log: Callable[[str], None] | None = None) -> RotInvTrainResult:
    from tqdm import tqdm

    from ..models.rotinv import RotInvAutoencoder
    from ..models.spatial_vae import SpatialVAE

    idx_all = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx_all) < 2 * config.batch_size:
        raise UserError(f"{len(idx_all)} images are too few for batch size {config.batch_size}")
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the global state left alone
        torch.manual_seed(config.seed)
        model = RotInvAutoencoder(model_config) if kind == "rotinv" else SpatialVAE(model_config)
    main_params = [p for name, p in model.named_parameters() if not name.startswith("critic.")]
    opt = torch.optim.Adam(main_params, lr=config.learning_rate)
    use_critic = kind == "rotinv" and config.lambda_wasserstein > 0
    opt_c = torch.optim.Adam(model.critic.parameters(), lr=config.learning_rate, betas=(0.5, 0.9)) if use_critic else None
    gen = torch.Generator().manual_seed(config.seed + 1)
    std = None
    history: list = []
    start = 0
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        std, history, start = _resume(checkpoint_path, kind, config, model, opt, opt_c, gen)
    if std is None:
        std = fit_standardization(source, idx_all, invert_contrast=config.invert_contrast, seed=config.seed)
    steps = len(idx_all) // config.batch_size
    bar = tqdm(total=steps * max(0, config.epochs - start), unit="step", desc=f"{kind} train", disable=not progress,
               leave=False)
    t_start = time.perf_counter()
    model.train()
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        frac = config.final_lr_fraction + (1 - config.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
        for o in (opt, opt_c):
            if o is not None:
                for g in o.param_groups:
                    g["lr"] = config.learning_rate * frac
        order = idx_all[np.random.default_rng([config.seed, epoch]).permutation(len(idx_all))]
        sums: dict[str, float] = {}
        for s in range(steps):
            x = prepare_images(_read(source, np.sort(order[s * config.batch_size:(s + 1) * config.batch_size])),
                               config, std)
            parts = _step(kind, model, opt, opt_c, x, config=config, epoch=epoch, generator=gen)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
        row = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}, "seconds": time.perf_counter() - t0}
        history.append(row)
        if log is not None:
            log(f"epoch {epoch + 1}/{config.epochs}: " + " ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                                  if k not in ("epoch", "seconds"))
                + f" ({row['seconds']:.1f} s)")
        if checkpoint_path is not None:
            _save(checkpoint_path, kind, model, config, std, opt, opt_c, epoch=epoch + 1, history=history, generator=gen)
    bar.close()
    model.eval()
    return RotInvTrainResult(model=model, kind=kind, config=config, standardization=std, history=history,
                             seconds=time.perf_counter() - t_start)


def train_rotinv(source, model_config, config: RotInvTrainConfig, **kwargs) -> RotInvTrainResult:
    """Train the rotation-invariant autoencoder (Bibas et al. 2021) on images treated as canonical.

    Args:
        source: Images ``(N, n, n)`` (tensor or :class:`~cryopose.io.particles.ParticleStack`).
        model_config: :class:`cryopose.models.rotinv.RotInvConfig` (its box must be ``n``).
        config: :class:`RotInvTrainConfig`.
        **kwargs: ``indices`` (training subset), ``checkpoint_path`` (written atomically after
            every epoch), ``resume``, ``progress``, ``log``.

    Returns:
        :class:`RotInvTrainResult`.

    Raises:
        UserError: Too few images, or a resumed checkpoint of other options.
    """
    return _train("rotinv", source, model_config, config, **kwargs)


def train_spatial_vae(source, model_config, config: RotInvTrainConfig, **kwargs) -> RotInvTrainResult:
    """Train spatial-VAE (Bepler et al. 2019) on randomly turned images (unsupervised).

    Same arguments as :func:`train_rotinv` with a :class:`cryopose.models.spatial_vae.SpatialVAEConfig`.
    """
    return _train("spatial_vae", source, model_config, config, **kwargs)


@dataclasses.dataclass
class RotInvPrediction:
    """Predictions for a set of images.

    Attributes:
        theta_rad: ``(N,)`` image rotation ``θ̂`` (radians, (−π, π]) relative to the model's
            canonical frame (:func:`rotate_images` convention: ``ψ = ψ_canonical − θ``).
        canonical: ``(N, n, n)`` canonical images in standardised units (rotinv: the decoder's
            output; spatial-VAE: the rendering at ``θ_sv = canonical_angle``).
        content: ``(N, D)`` content codes (rotinv) or latent means ``z`` (spatial-VAE).
    """

    theta_rad: np.ndarray
    canonical: np.ndarray
    content: np.ndarray


@torch.no_grad()
def predict_rotinv(model, kind: str, source, config: RotInvTrainConfig, standardization: Standardization, *,
                   batch_size: int = 256, canonical_angle: float = 0.0, indices=None,
                   progress: bool = False) -> RotInvPrediction:
    """Angles, canonical images and content codes of images (no augmentation).

    Args:
        model: Trained model (:func:`load_rotinv_checkpoint`).
        kind: ``"rotinv"`` or ``"spatial_vae"``.
        source: Images ``(N, n, n)``.
        config, standardization: As trained.
        batch_size: Images per forward pass.
        canonical_angle: spatial-VAE only: coordinate angle ``θ_sv`` at which to render the
            canonical image (its frame is arbitrary; the benchmark aligns it).
        indices: Subset of ``source`` (default all).
        progress: Progress bar.

    Returns:
        :class:`RotInvPrediction`.
    """
    from tqdm import tqdm

    model.eval()
    idx_all = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    th, can, con = [], [], []
    for s in tqdm(range(0, len(idx_all), batch_size), desc="predict", disable=not progress, leave=False):
        x = prepare_images(_read(source, idx_all[s:s + batch_size]), config, standardization)
        if kind == "rotinv":
            canon, theta, code, _ = model(lowpass_images(x, config.input_lowpass))
        else:
            post = model.posterior(x)
            theta = spatial_vae_angle_to_theta(post["theta_mu"])
            code = post["z_mu"]
            canon = model.render(code, torch.full_like(post["theta_mu"], float(canonical_angle)))
        th.append(wrap_angle(theta).double())
        can.append(canon.float())
        con.append(code.double())
    return RotInvPrediction(theta_rad=torch.cat(th).numpy(), canonical=torch.cat(can).numpy(),
                            content=torch.cat(con).numpy())


class DownsampledSource:
    """A view of an image source Fourier-cropped to ``box_size`` (read a batch at a time).

    Args:
        source: Images ``(N, n, n)`` (tensor or particle stack).
        box_size: Edge ``m <= n`` of the returned images.
    """

    def __init__(self, source, box_size: int):
        self.source = source
        self.box_size = int(box_size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, idx) -> torch.Tensor:
        from ..fourier import fourier_downsample_images

        x = _read(self.source, np.atleast_1d(np.arange(len(self))[idx]))
        return fourier_downsample_images(x, self.box_size) if x.shape[-1] != self.box_size else x
