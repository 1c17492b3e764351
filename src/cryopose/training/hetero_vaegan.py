"""Training of the invariant heterogeneity VAE-GAN (:mod:`cryopose.models.hetero_vaegan`).

The thesis's model: an encoder invariant to in-plane shifts and rotations, a generator of one
3D map per latent seen through the physics (uniform pose prior, the data set's own CTFs, a
noise generator), a Wasserstein critic, and VAE terms that couple encoder and generator.

**Fake particles.** ``x̃ = noise(Re F⁻¹[CTF_j · P_R V(z)])`` with ``R`` uniform on SO(3)
(:func:`cryopose.rotations.random_rotations`), ``j`` a particle drawn uniformly from the data
set (its CTF row, times the whitening filter when the data are whitened, exactly as the real
images are prepared by :class:`cryopose.data.dataset.ParticleDataset`) and ``z`` from the prior
``N(0, I)`` or from the encoder's posterior of a real particle.

**Critic step** (every batch ``x`` of real particles; ``z ~ N(0, I)``, fakes without gradient):

``L_D = mean D(x̃) − mean D(x) + λ_GP · mean (‖∇D(x̂)‖₂ − 1)²``, ``x̂ = a x + (1 − a) x̃``,
``a ~ U[0, 1]`` per image (WGAN-GP, Gulrajani et al. 2017).

**Encoder + generator step** (every ``n_critic``-th batch), with ``(μ, log σ²) = E(x)``,
``z_q = μ + σ ε`` (reparameterisation) and ``z_p ~ N(0, I)``, one fake per ``z_p`` and per
``z_q``:

``L_G = λ_adv · (−mean D(x̃))``  over both sets of fakes (the generator's WGAN loss);
``    + λ_z · mean ‖μ_E(x̃) − z‖²``  latent reconstruction over both sets (target ``z_p``, or
``z_q`` held fixed): the encoder learns to invert the generator, and the generator to make
its latent recoverable from noisy, CTF-modulated projections at any pose;
``    + λ_KL · mean KL(q(z|x) ‖ N(0, I))``  on the real particles (sum over latent dimensions);
``    + λ_feat · mean ‖φ(x) − φ(x̃_q)‖² / mean ‖φ(x)‖²``  the learned similarity of Larsen et al.
(2016) with the critic's invariant features ``φ``: the VAE's reconstruction term, up to pose
(a pixel comparison is impossible without the particle's pose).

Every weight and its default is in :class:`HeteroVAEGANTrainConfig`; the losses are computed in
:mod:`cryopose.training.hetero_vaegan_losses`. The latents written are
the encoder's means ``μ`` of the real particles. :func:`fit_invariant_vaegan` trains on a
:class:`~cryopose.data.dataset.ParticleDataset` (checkpoints every epoch, resume from one);
:func:`train_invariant_vaegan` is the run on a particle file with the output contract that
``cryopose heterogeneity analyze`` reads, and :func:`load_generator` renders the trained
generator's map of any latent.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from ..data.dataset import ParticleDataset
from ..models.hetero_vaegan import NOISE_MODELS, HeteroVAEGANConfig, InvariantVAEGAN
from ..models.volume import spherical_mask
from .checkpoint import HETERO_VAEGAN_FORMAT, dataset_fingerprint, save_checkpoint
from .hetero_vaegan_losses import critic_loss, generator_losses, make_fakes

__all__ = ["HeteroVAEGANTrainConfig", "VAEGANFit", "model_config", "build_model", "encode_dataset",
           "fit_invariant_vaegan", "OUTPUT_FILES", "InvariantVAEGANRun", "train_invariant_vaegan", "GeneratorMaps",
           "load_generator"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeteroVAEGANTrainConfig:
    """Every option of the invariant VAE-GAN run, with its default.

    Attributes:
        box_size: Working box in pixels (Fourier crop); ``None`` keeps the images' box.
        zdim: Latent dimension.
        n_theta, channels, hidden: Invariant encoder / critic (:class:`HeteroVAEGANConfig`).
        n_basis, generator_hidden, mask_radius_fraction, basis_init_std: Generator
            (:class:`HeteroVAEGANConfig`).
        noise_model: ``"gaussian"`` (default), ``"poisson"`` or ``"none"``.
        whiten: Whiten particles and the generator's CTFs with the background noise spectrum.
        epochs: Passes over the particles.
        batch_size: Real particles per step (and fakes per set).
        lr: Adam learning rate of the encoder and the generator's coefficient MLP.
        volume_lr: Adam learning rate of the generator's basis volumes (dimensionless, O(1))
            and of the noise generator's parameters.
        critic_lr: Adam learning rate of the critic.
        beta1, beta2: Adam's betas for both.
        n_critic: Critic steps per encoder + generator step.
        weight_adversarial: ``λ_adv`` of the generator's WGAN loss.
        weight_gradient_penalty: ``λ_GP`` of the critic's gradient penalty.
        weight_latent: ``λ_z`` of the latent reconstruction ``‖μ_E(G(z)) − z‖²``.
        weight_kl: ``λ_KL`` of the KL divergence of the real particles' posteriors.
        weight_feature: ``λ_feat`` of the learned-similarity term on critic features.
        seed: Seed of every random choice (initialisation, batch order, poses, CTF rows, noise).
        num_threads: Torch threads while training (0: leave torch's setting).

    Raises:
        ValueError: On construction, for values out of range.
    """

    box_size: int | None = 32
    zdim: int = 8
    n_theta: int = 32
    channels: int = 16
    hidden: int = 128
    n_basis: int = 8
    generator_hidden: int = 64
    mask_radius_fraction: float = 0.9
    basis_init_std: float = 0.02
    noise_model: str = "gaussian"
    whiten: bool = True
    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-4
    volume_lr: float = 5e-3
    critic_lr: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.9
    n_critic: int = 2
    weight_adversarial: float = 1.0
    weight_gradient_penalty: float = 10.0
    weight_latent: float = 1.0
    weight_kl: float = 0.1
    weight_feature: float = 1.0
    seed: int = 0
    num_threads: int = 0

    def __post_init__(self):
        for name in ("zdim", "epochs", "batch_size", "n_critic"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.noise_model not in NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {', '.join(NOISE_MODELS)}, got {self.noise_model!r}")
        for name in ("lr", "volume_lr", "critic_lr"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_adversarial", "weight_gradient_penalty", "weight_latent", "weight_kl", "weight_feature"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def loss_weights(self) -> dict[str, float]:
        """The loss weights by name (as written to ``heterogeneity.json``)."""
        return {k: float(getattr(self, k)) for k in ("weight_adversarial", "weight_gradient_penalty",
                                                     "weight_latent", "weight_kl", "weight_feature")}


def model_config(config: HeteroVAEGANTrainConfig, box_size: int) -> HeteroVAEGANConfig:
    """The network shape of a run at working box ``box_size`` (pixels)."""
    return HeteroVAEGANConfig(box_size=int(box_size), zdim=config.zdim, n_theta=config.n_theta,
                              channels=config.channels, hidden=config.hidden, n_basis=config.n_basis,
                              generator_hidden=config.generator_hidden,
                              mask_radius_fraction=config.mask_radius_fraction, noise_model=config.noise_model,
                              basis_init_std=config.basis_init_std)


def build_model(config: HeteroVAEGANTrainConfig, dataset: ParticleDataset) -> InvariantVAEGAN:
    """A fresh, seeded model for ``dataset``, its map scale fitted to the data.

    The density scale ``s`` is :func:`cryopose.training.trainer.estimate_volume_scale`; the mean
    volume starts as its soft ball (radius ``0.35 · n/2``, the fitted density) plus the random
    start, so the first fakes have about the particles' power.
    """
    from .trainer import estimate_volume_scale

    g = torch.Generator().manual_seed(int(config.seed))
    model = InvariantVAEGAN(model_config(config, dataset.box_size), generator=g)
    n = dataset.box_size
    with torch.no_grad():
        model.generator.scale.fill_(estimate_volume_scale(dataset))
        model.generator.mean.add_(spherical_mask(n, 0.35 * n / 2.0) / 3.0)
    return model


@torch.no_grad()
def encode_dataset(model: InvariantVAEGAN, dataset: ParticleDataset, *, batch_size: int = 256,
                   progress: bool = False) -> np.ndarray:
    """Latent means ``(N, zdim)`` float32 of every particle, in the data set's order."""
    from tqdm import tqdm

    out = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="encode", disable=not progress):
        idx = np.arange(start, min(start + batch_size, len(dataset)))
        out.append(model.encode(dataset.images(idx))[0])
    return torch.cat(out).numpy().astype(np.float32)


@dataclasses.dataclass
class VAEGANFit:
    """State and outcome of a training run (:func:`fit_invariant_vaegan`).

    Attributes:
        model: The trained :class:`InvariantVAEGAN`.
        latents: ``(N, zdim)`` float32 latent means, data-set order.
        history: One dict of mean losses per epoch (``wasserstein``, ``gp``, ``adv``,
            ``latent``, ``kl``, ``feature``, ``noise_sigma``).
        epochs_done: Epochs trained in all (resumed runs included).
        seconds: Wall time of this call's training.
    """

    model: InvariantVAEGAN
    latents: np.ndarray
    history: list[dict]
    epochs_done: int
    seconds: float


def _state(model, opt_g, opt_d, g, epoch: int, history: list[dict], extra: dict) -> dict:
    return {**extra, "model": model.state_dict(), "optimizer_generator": opt_g.state_dict(),
            "optimizer_critic": opt_d.state_dict(), "rng": g.get_state(), "epoch": int(epoch),
            "history": list(history)}


def _epoch(model, dataset, config, opt_g, opt_d, g, bar) -> dict:
    """One pass over the particles; mean losses."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    perm = torch.randperm(len(dataset), generator=g).numpy()
    for step, start in enumerate(range(0, len(dataset), config.batch_size)):
        real = dataset.images(perm[start:start + config.batch_size])
        with torch.no_grad():
            fake = make_fakes(model, dataset, torch.randn(real.shape[0], config.zdim, generator=g), g)
        loss_d, parts = critic_loss(model, real, fake, g, config.weight_gradient_penalty)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if step % config.n_critic == config.n_critic - 1:
            loss_g, more = generator_losses(model, dataset, real, config, g)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            parts.update(more)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
        bar.update(1)
        bar.set_postfix({k: f"{sums[k] / counts[k]:.3g}" for k in sums} | {"sigma": f"{model.noise.sigma:.3g}"})
    means = {k: sums[k] / counts[k] for k in sums}
    means["noise_sigma"] = model.noise.sigma
    return means


def _parameter_groups(model: InvariantVAEGAN, config: HeteroVAEGANTrainConfig) -> list[dict]:
    volumes = [model.generator.mean, model.generator.basis, *model.noise.parameters()]
    ids = {id(p) for p in volumes}
    rest = [p for p in model.generator_parameters() if id(p) not in ids]
    return [{"params": rest, "lr": config.lr}, {"params": volumes, "lr": config.volume_lr}]


def fit_invariant_vaegan(dataset: ParticleDataset, config: HeteroVAEGANTrainConfig, *,
                         checkpoint_path: str | Path | None = None, checkpoint_extra: dict | None = None,
                         resume_state: dict | None = None, progress: bool = False) -> VAEGANFit:
    """Train the invariant VAE-GAN on a data set and encode every particle.

    Args:
        dataset: Particles at the working box (normalised, optionally whitened).
        config: :class:`HeteroVAEGANTrainConfig`; ``config.epochs`` is the total, resumed
            epochs included.
        checkpoint_path: Where to write the checkpoint after every epoch (atomically) and on
            Ctrl-C (the last finished epoch's state); ``None``: no checkpoints.
        checkpoint_extra: More plain values stored in every checkpoint (config, fingerprint).
        resume_state: A loaded checkpoint to continue from (same data and options): model,
            both optimisers, the random generator and the epoch count are restored, so the
            run continues exactly as if never interrupted.
        progress: tqdm bar with the running mean losses.

    Returns:
        :class:`VAEGANFit`.

    Raises:
        KeyboardInterrupt: Re-raised after the checkpoint of the last finished epoch is kept.
    """
    from tqdm import tqdm

    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    try:
        model = build_model(config, dataset)
        g = torch.Generator().manual_seed(int(config.seed) + 1)
        opt_g = torch.optim.Adam(_parameter_groups(model, config), betas=(config.beta1, config.beta2))
        opt_d = torch.optim.Adam(model.critic.parameters(), lr=config.critic_lr, betas=(config.beta1, config.beta2))
        history: list[dict] = []
        epoch = 0
        if resume_state is not None:
            model.load_state_dict(resume_state["model"])
            opt_g.load_state_dict(resume_state["optimizer_generator"])
            opt_d.load_state_dict(resume_state["optimizer_critic"])
            g.set_state(resume_state["rng"])
            epoch, history = int(resume_state["epoch"]), list(resume_state.get("history", []))
        steps = -(-len(dataset) // config.batch_size)
        t0 = time.perf_counter()
        with tqdm(total=steps * config.epochs, initial=steps * epoch, unit="step", desc="hetero-vaegan",
                  disable=not progress) as bar:
            while epoch < config.epochs:
                model.train()
                history.append(_epoch(model, dataset, config, opt_g, opt_d, g, bar))
                epoch += 1
                if checkpoint_path is not None:
                    save_checkpoint(checkpoint_path, _state(model, opt_g, opt_d, g, epoch, history,
                                                            checkpoint_extra or {}), format=HETERO_VAEGAN_FORMAT)
        model.eval()
        latents = encode_dataset(model, dataset, progress=progress)
        return VAEGANFit(model, latents, history, epoch, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


#: Files of a run folder (the contract ``cryopose heterogeneity analyze`` reads).
OUTPUT_FILES = ("latents.npy", "heterogeneity.json", "config.yaml", "model.pt", "checkpoint.pt")


@dataclasses.dataclass(frozen=True)
class InvariantVAEGANRun:
    """What :func:`train_invariant_vaegan` wrote: the folder, ``latents`` ``(N, zdim)`` (input
    order), ``summary`` (``heterogeneity.json``) and ``history`` (mean losses per epoch)."""

    outdir: Path
    latents: np.ndarray
    summary: dict
    history: list[dict]


def _check_outdir(outdir: Path, *, force: bool, resume: bool) -> None:
    from ..errors import UserError

    if force and resume:
        raise UserError("--force and --resume exclude each other: --resume continues the run in the folder, "
                        "--force starts it again")
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"-o {outdir}: exists and is not a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    present = [f for f in OUTPUT_FILES if (outdir / f).exists()]
    if resume and not (outdir / "checkpoint.pt").exists():
        raise UserError(f"--resume: no checkpoint.pt in {outdir}")
    if present and not (resume or force):
        raise UserError(f"{outdir} already holds a run ({', '.join(present)}); use --resume to continue it, "
                        "--force to start again, or another -o")
    if force:
        for f in present:
            (outdir / f).unlink()


def _check_resume(saved: dict, config: HeteroVAEGANTrainConfig, fingerprint: dict) -> None:
    from ..errors import UserError

    old = HeteroVAEGANTrainConfig(**saved["config"])
    if dataclasses.replace(old, epochs=config.epochs) != config:
        diff = [k for k, v in dataclasses.asdict(config).items() if k != "epochs" and getattr(old, k) != v]
        raise UserError("--resume: the options differ from the interrupted run's (" + ", ".join(diff) +
                        "); only the number of epochs may change. Rerun with the original options or another -o")
    if config.epochs < int(saved["epoch"]):
        raise UserError(f"--resume: the run has already done {saved['epoch']} epochs; {config.epochs} epochs "
                        "would end before where it stands")
    if saved.get("dataset") != fingerprint:
        raise UserError("--resume: these particles are not the interrupted run's (count, box, pixel size or "
                        "image names differ); use another -o for a new run")


def _write_config(path: Path, config: HeteroVAEGANTrainConfig, particles, resume: bool) -> None:
    import datetime
    import platform

    import yaml

    from .. import __version__
    from ..io.atomic import atomic_write_text

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    doc = {"cryopose_version": __version__, "date": date, "python": platform.python_version(), "variant": "invariant",
           "config": dataclasses.asdict(config), "particles": str(particles), "resume": bool(resume)}
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def train_invariant_vaegan(particles_path: str | Path, outdir: str | Path, config: HeteroVAEGANTrainConfig, *,
                           force: bool = False, resume: bool = False, progress: bool = True,
                           datadir: str | Path | None = None) -> InvariantVAEGANRun:
    """Train the invariant VAE-GAN on a particle file and write the run folder.

    Files in ``outdir``: ``latents.npy`` (float32 ``(N, zdim)`` latent means, in the input's
    particle order), ``heterogeneity.json`` (``variant`` = ``"invariant"``, ``zdim``,
    ``particles`` as given, ``n_particles``, working box and pixel size, loss weights, epochs,
    final losses, wall time), ``config.yaml`` (version, date, options), ``model.pt`` (the
    model's state dict with what :func:`load_generator` needs) and ``checkpoint.pt`` (every
    epoch). All are written atomically.

    Args:
        particles_path: ``.star``, ``.cs`` or ``.mrcs`` (:func:`cryopose.io.particles.load_particles`).
        outdir: Run folder (created).
        config: :class:`HeteroVAEGANTrainConfig`. A ``box_size`` above the images' is reduced
            to the images' box.
        force: Delete an earlier run's files in ``outdir`` and start again.
        resume: Continue the run whose ``checkpoint.pt`` is in ``outdir`` (same options and
            particles; only ``epochs`` may change).
        progress: Progress bars.
        datadir: Another folder the stacks may be read from.

    Returns:
        :class:`InvariantVAEGANRun`.

    Raises:
        UserError: Unreadable input, ``outdir`` holding a run without ``force``/``resume``,
            ``resume`` without a checkpoint or with other options or particles.
    """
    from ..errors import UserError
    from ..io.atomic import atomic_write, atomic_write_json
    from ..io.particles import load_particles
    from .checkpoint import load_checkpoint
    from ..data.transforms import Normalization

    outdir = Path(outdir)
    _check_outdir(outdir, force=force, resume=resume)
    saved = load_checkpoint(outdir / "checkpoint.pt", formats=(HETERO_VAEGAN_FORMAT,)) if resume else None
    stack, meta = load_particles(particles_path, datadir=datadir)
    if meta.ctf is None and progress:
        print(f"cryopose heterogeneity: warning: {particles_path} has no CTF parameters; generating without CTF")
    box = stack.box_size if config.box_size is None else min(int(config.box_size), int(stack.box_size))
    if box < 8:
        raise UserError(f"working box {box} px is too small for the VAE-GAN (at least 8 px)")
    fingerprint = dataset_fingerprint(stack, meta)
    if saved is not None:
        _check_resume(saved, config, fingerprint)
    _write_config(outdir / "config.yaml", config, particles_path, resume)
    norm = None if saved is None else Normalization(**saved["normalization"])
    dataset = ParticleDataset(stack, meta, box_size=box, normalization=norm, whiten=config.whiten)
    extra = {"config": dataclasses.asdict(config), "normalization": dataclasses.asdict(dataset.normalization),
             "working_box_size": dataset.box_size, "working_pixel_size_angstrom": dataset.pixel_size_angstrom,
             "dataset": fingerprint, "particles": str(particles_path)}
    fit = fit_invariant_vaegan(dataset, config, checkpoint_path=outdir / "checkpoint.pt", checkpoint_extra=extra,
                               resume_state=saved, progress=progress)
    save_checkpoint(outdir / "model.pt", {"model": fit.model.state_dict(),
                                          "model_config": dataclasses.asdict(fit.model.config), **extra},
                    format=HETERO_VAEGAN_FORMAT)
    with atomic_write(outdir / "latents.npy") as f:
        np.save(f, fit.latents)
    summary = {"variant": "invariant", "zdim": int(config.zdim), "particles": str(particles_path),
               "n_particles": int(len(dataset)), "working_box_size": int(dataset.box_size),
               "working_pixel_size_angstrom": float(dataset.pixel_size_angstrom), "epochs": int(fit.epochs_done),
               "loss_weights": config.loss_weights(), "noise_model": config.noise_model,
               "final_losses": fit.history[-1] if fit.history else {},
               "train_seconds_this_call": round(fit.seconds, 2)}
    atomic_write_json(outdir / "heterogeneity.json", summary)
    return InvariantVAEGANRun(outdir, fit.latents, summary, fit.history)


@dataclasses.dataclass
class GeneratorMaps:
    """The trained generator of a run: ``maps(z)`` renders the 3D map of each latent.

    Attributes:
        model: The trained :class:`InvariantVAEGAN` (eval mode).
        box_size: Edge ``D`` of the maps, voxels (the working box).
        pixel_size_angstrom: Voxel size of the maps, Å.
        zdim: Latent dimension.

    The maps are in the units of the normalised (whitened) particles; the encoder and critic
    see Fourier amplitudes only, so a map's contrast sign and hand are not determined.
    """

    model: InvariantVAEGAN
    box_size: int
    pixel_size_angstrom: float
    zdim: int

    @torch.no_grad()
    def __call__(self, z) -> torch.Tensor:
        """Maps ``(B, D, D, D)`` float32 ``(z, y, x)`` of latents ``(B, zdim)`` (tensor or array).

        Raises:
            ValueError: ``z`` not of shape ``(B, zdim)``.
        """
        z = torch.as_tensor(np.asarray(z, dtype=np.float32))
        if z.ndim != 2 or z.shape[1] != self.zdim:
            raise ValueError(f"latents must be (B, {self.zdim}), got {tuple(z.shape)}")
        return self.model.generator.volumes(z).float()


def load_generator(outdir: str | Path) -> GeneratorMaps:
    """The generator of the run in ``outdir`` (its ``model.pt``), ready to render maps.

    Raises:
        InputFileError: ``model.pt`` missing, unreadable or not a heterogeneity VAE-GAN file.
    """
    from .checkpoint import load_checkpoint

    state = load_checkpoint(Path(outdir) / "model.pt", formats=(HETERO_VAEGAN_FORMAT,))
    model = InvariantVAEGAN(HeteroVAEGANConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    return GeneratorMaps(model, int(state["working_box_size"]), float(state["working_pixel_size_angstrom"]),
                         int(model.config.zdim))
