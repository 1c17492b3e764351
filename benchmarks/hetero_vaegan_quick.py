"""Invariant VAE-GAN on a two-class EMPIAR-10076 mixture: KMeans(2) NMI of the latents and wall time.

The two 32³ maps of EMPIAR-10076 assembly states (classes D and E, 13.1 Å/px, ``../shared/data/maps``)
are each projected by the project's simulator (:func:`cryopose.simulate.simulate_in_memory`,
uniform poses, no shifts, defocus 1.0–2.5 µm, no noise), ``--n / 2`` particles per class; white
noise of one σ for both classes is added (``σ² = mean signal variance over all particles / SNR``,
so the noise level does not betray the class), the particles are shuffled with ``--seed`` and
written as one STAR + MRCS; then
:func:`cryopose.training.hetero_vaegan.train_invariant_vaegan` is run with its defaults (except
``--epochs``) and the latents are clustered with scikit-learn's KMeans (K = 2, 10 starts); NMI
against the true class. ``--epochs 0`` instead encodes the particles with the untrained (seeded)
encoder, and ``--epochs -1`` clusters PCA(4) of the standardised rotational averages of their
power spectra (after the same normalisation and whitening): two baselines that say how much
class information the Fourier amplitudes carry without training. One JSON line is printed; ``--out`` keeps the
data and the run folder.

    python benchmarks/hetero_vaegan_quick.py --n 1000 --snr 0.1 --epochs 20

``--case sphere-rod`` is the unit test's set instead (a sphere and a rod, 24 px, 5 Å/px, 200
particles, SNR 0.5, data seed 1, trained in memory with batch 32), for ablations:
``--set KEY=VALUE`` (repeatable) overrides an option of ``HeteroVAEGANTrainConfig``.

    python benchmarks/hetero_vaegan_quick.py --case sphere-rod --epochs 12 --set weight_feature=0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cryopose.ctf import CTFParams  # noqa: E402
from cryopose.io.metadata import ParticleMetadata  # noqa: E402
from cryopose.io.mrc import read_map, write_stack  # noqa: E402
from cryopose.io.star import write_star  # noqa: E402
from cryopose.simulate.noise import add_white_noise, noise_sigma_for_snr, signal_variance  # noqa: E402
from cryopose.simulate.simulator import SimulationConfig, simulate_in_memory  # noqa: E402
from cryopose.training.hetero_vaegan import HeteroVAEGANTrainConfig, train_invariant_vaegan  # noqa: E402

SHARED = Path(os.environ.get("CRYOPOSE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
PIXEL_ANGSTROM = 13.1  # SOURCE.md: the header says 1.0


def write_mixture(volumes, n_per_class: int, snr: float, seed: int, folder: Path) -> tuple[Path, np.ndarray]:
    """Simulate ``n_per_class`` particles of each volume, shuffle, write ``mixture.star``; return it and the labels."""
    cfg = SimulationConfig(snr=None, defocus_range_angstrom=(10000.0, 25000.0))
    images, ctfs, labels = [], [], []
    for k, vol in enumerate(volumes):
        im, meta = simulate_in_memory(vol, pixel_size_angstrom=PIXEL_ANGSTROM, n_particles=n_per_class, config=cfg,
                                      generator=seed * 100 + k)
        images.append(im)
        ctfs.append(meta.ctf)
        labels.append(np.full(n_per_class, k))
    order = np.random.default_rng(seed).permutation(n_per_class * len(volumes))
    images = torch.cat(images)[torch.from_numpy(order)]
    sigma = noise_sigma_for_snr(float(signal_variance(images).mean()), snr)
    images = add_white_noise(images, sigma, generator=torch.Generator().manual_seed(seed + 12345))
    ctf = CTFParams.concatenate(ctfs)[torch.from_numpy(order)]
    labels = np.concatenate(labels)[order]
    stack = folder / "mixture.mrcs"
    write_stack(stack, images.numpy(), PIXEL_ANGSTROM)
    meta = ParticleMetadata(pixel_size_angstrom=PIXEL_ANGSTROM, box_size=images.shape[-1], ctf=ctf,
                            image_paths=[str(stack)] * len(order), image_indices=np.arange(len(order)))
    star = folder / "mixture.star"
    write_star(star, meta, image_names=[f"{i + 1:06d}@{stack}" for i in range(len(order))])
    return star, labels


def sphere_rod(n: int = 24, n_particles: int = 200, snr: float = 0.5, seed: int = 1):
    """The unit test's two-class set (``tests/unit/test_hetero_vaegan.py``): dataset and labels."""
    from cryopose.data.dataset import ParticleDataset, TensorStack

    c = torch.arange(n, dtype=torch.float32) - n // 2
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    sphere = ((xx**2 + yy**2 + zz**2) < (0.2 * n) ** 2).float()
    rod = ((xx**2 + yy**2) < (0.08 * n) ** 2).float() * (zz.abs() < 0.375 * n).float()
    cfg = SimulationConfig(snr=None, defocus_range_angstrom=(10000.0, 20000.0))
    parts = [simulate_in_memory(v, pixel_size_angstrom=5.0, n_particles=n_particles // 2, config=cfg,
                                generator=seed * 10 + k) for k, v in enumerate((sphere, rod))]
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n_particles))
    images = torch.cat([p[0] for p in parts])[order]
    sigma = noise_sigma_for_snr(float(signal_variance(images).mean()), snr)
    images = add_white_noise(images, sigma, generator=torch.Generator().manual_seed(seed + 99))
    ctf = CTFParams.concatenate([p[1].ctf for p in parts])[order]
    labels = np.repeat([0, 1], n_particles // 2)[order.numpy()]
    meta = ParticleMetadata(pixel_size_angstrom=5.0, box_size=n, ctf=ctf)
    return ParticleDataset(TensorStack(images), meta, whiten=True), labels


def radial_power_features(star: Path, config: HeteroVAEGANTrainConfig) -> np.ndarray:
    """PCA(4) of the standardised rotational averages of the particles' power spectra."""
    from sklearn.decomposition import PCA

    from cryopose.data.dataset import ParticleDataset
    from cryopose.data.preprocess import radial_average
    from cryopose.fourier import centered_fft2
    from cryopose.io.particles import load_particles

    stack, meta = load_particles(star)
    dataset = ParticleDataset(stack, meta, box_size=config.box_size, whiten=config.whiten)
    power = centered_fft2(dataset.images(np.arange(len(dataset)))).abs() ** 2
    feats = torch.stack([radial_average(p) for p in power]).numpy()
    return PCA(4).fit_transform((feats - feats.mean(0)) / feats.std(0))


def untrained_latents(star: Path, config: HeteroVAEGANTrainConfig) -> np.ndarray:
    """Latent means of the particles under the seeded, untrained model (same preprocessing as a run)."""
    from cryopose.data.dataset import ParticleDataset
    from cryopose.io.particles import load_particles
    from cryopose.training.hetero_vaegan import build_model, encode_dataset

    stack, meta = load_particles(star)
    dataset = ParticleDataset(stack, meta, box_size=config.box_size, whiten=config.whiten)
    return encode_dataset(build_model(config, dataset), dataset)


def _nmi(labels, latents) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    return round(float(normalized_mutual_info_score(labels, KMeans(2, n_init=10, random_state=0).fit_predict(
        latents))), 4)


def sphere_rod_main(args, overrides: dict) -> int:
    """``--case sphere-rod``: train in memory (or encode untrained with ``--epochs 0``); one JSON line."""
    from cryopose.training.hetero_vaegan import build_model, encode_dataset, fit_invariant_vaegan

    dataset, labels = sphere_rod()
    config = HeteroVAEGANTrainConfig(box_size=None, epochs=max(args.epochs, 1), batch_size=32, seed=args.seed,
                                     **overrides)
    t0 = time.perf_counter()
    latents = (encode_dataset(build_model(config, dataset), dataset) if args.epochs == 0
               else fit_invariant_vaegan(dataset, config).latents)
    print(json.dumps({"case": "sphere-rod", "epochs": args.epochs, "seed": args.seed, "set": overrides,
                      "nmi_kmeans2": _nmi(labels, latents), "wall_s": round(time.perf_counter() - t0, 1)}))
    return 0


def main(argv=None) -> int:
    """Run the benchmark; prints one JSON line."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="particles in all (half per class)")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=20,
                   help="0: the untrained encoder; -1: radial power spectra (baselines)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="keep the data and run folder here")
    p.add_argument("--case", choices=("10076", "sphere-rod"), default="10076")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config option")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {k: type(getattr(HeteroVAEGANTrainConfig(), k))(v) if not isinstance(
        getattr(HeteroVAEGANTrainConfig(), k), bool) else v.lower() in ("1", "true")
        for k, v in (item.split("=", 1) for item in args.set)}
    if args.case == "sphere-rod":
        return sphere_rod_main(args, overrides)
    maps = [read_map(SHARED / "maps" / f"10076_class{c}_32.mrc", pixel_size_angstrom=PIXEL_ANGSTROM).volume
            for c in "DE"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        star, labels = write_mixture(maps, args.n // 2, args.snr, args.seed, folder)
        config = HeteroVAEGANTrainConfig(epochs=max(args.epochs, 1), seed=args.seed, **overrides)
        t0 = time.perf_counter()
        if args.epochs == -1:
            latents, losses = radial_power_features(star, config), {}
        elif args.epochs == 0:
            latents, losses = untrained_latents(star, config), {}
        else:
            run = train_invariant_vaegan(star, folder / "run", config, force=True, progress=False)
            latents, losses = run.latents, {k: round(v, 4) for k, v in run.history[-1].items()}
        seconds = time.perf_counter() - t0
    pred = KMeans(2, n_init=10, random_state=0).fit_predict(latents)
    nmi = normalized_mutual_info_score(labels, pred)
    print(json.dumps({"n": args.n, "snr": args.snr, "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
                      "nmi_kmeans2": round(float(nmi), 4), "wall_s": round(seconds, 1), "final_losses": losses}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
