"""Classes from a latent space: UMAP embedding, HDBSCAN clustering, and scores against the truth.

The latent vectors of a heterogeneity run (``latents.npy``, either variant) are embedded in 2D
with UMAP (McInnes et al. 2018, ``umap-learn``; ``n_neighbors`` 30, ``min_dist`` 0, Euclidean,
seeded) and clustered with HDBSCAN (Campello et al. 2013; :class:`sklearn.cluster.HDBSCAN`) whose
minimum cluster size is a fraction of the particles (``allow_single_cluster``: without it
HDBSCAN never answers "one class": it split the single Gaussian blob of
``tests/unit/test_heterogeneity.py`` into two spurious classes), so the number of classes is found, not given — the pipeline of the VAE-GAN
thesis behind issue 19. HDBSCAN's noise points (label −1)
are kept as their own subset (junk candidates). Classes are numbered by size, largest first.

With a latent dimension of 2 or less the latents are clustered directly (UMAP would only
distort them). Scores against known labels: NMI, ARI and AMI (scikit-learn) over all particles
(noise as one more label) and over those HDBSCAN assigned; for a continuous truth the absolute
Spearman correlation of the latents' first principal component with it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import UserError

__all__ = ["ClusteringResult", "embed_latents", "cluster_embedding", "cluster_latents", "label_scores",
           "principal_component_spearman", "NOISE_LABEL"]

#: Label of HDBSCAN's noise points.
NOISE_LABEL = -1


@dataclasses.dataclass(frozen=True)
class ClusteringResult:
    """Classes found in a latent space.

    Attributes:
        embedding: ``(N, 2)`` float32 UMAP coordinates (or the latents themselves when ``zdim <= 2``).
        labels: ``(N,)`` int64 class per particle, ``0 .. K−1`` by decreasing size, ``−1`` = noise.
        n_classes: ``K``.
        sizes: ``(K,)`` particles per class.
        n_noise: Particles in HDBSCAN's noise set.
        min_cluster_size: HDBSCAN's ``min_cluster_size`` used.
        warnings: What looks wrong (one class, everything noise), as sentences.
    """

    embedding: np.ndarray
    labels: np.ndarray
    n_classes: int
    sizes: np.ndarray
    n_noise: int
    min_cluster_size: int
    warnings: tuple[str, ...] = ()


def embed_latents(latents: np.ndarray, *, seed: int = 0, n_neighbors: int = 30, min_dist: float = 0.0) -> np.ndarray:
    """UMAP of ``(N, d)`` latents to ``(N, 2)`` float32 (the latents themselves if ``d <= 2``).

    Raises:
        UserError: Fewer than 5 particles, or non-finite latents.
    """
    z = np.asarray(latents, dtype=np.float32)
    if z.ndim != 2 or z.shape[0] < 5:
        raise UserError(f"need latents of at least 5 particles as (N, zdim), got shape {z.shape}")
    if not np.isfinite(z).all():
        raise UserError(f"{int((~np.isfinite(z)).any(axis=1).sum())} latent vectors are not finite")
    if z.shape[1] <= 2:
        return np.pad(z, ((0, 0), (0, 2 - z.shape[1])))
    import warnings

    import umap

    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state"
        warnings.simplefilter("ignore", UserWarning)
        reducer = umap.UMAP(n_components=2, n_neighbors=min(int(n_neighbors), z.shape[0] - 1), min_dist=min_dist,
                            random_state=int(seed))
        return reducer.fit_transform(z).astype(np.float32)


def cluster_embedding(embedding: np.ndarray, *, min_class_fraction: float = 0.05) -> ClusteringResult:
    """HDBSCAN of an embedding with ``min_cluster_size = max(5, ceil(fraction · N))``.

    Raises:
        UserError: ``min_class_fraction`` outside ``(0, 0.5]``.
    """
    from sklearn.cluster import HDBSCAN

    if not 0 < min_class_fraction <= 0.5:
        raise UserError(f"--min-class-fraction must be in (0, 0.5], got {min_class_fraction}")
    n = embedding.shape[0]
    size = max(5, math.ceil(min_class_fraction * n))
    hdbscan = HDBSCAN(min_cluster_size=size, allow_single_cluster=True, copy=True)
    raw = hdbscan.fit_predict(np.asarray(embedding, dtype=np.float64))
    found = [c for c in np.unique(raw) if c != NOISE_LABEL]
    order = sorted(found, key=lambda c: -int((raw == c).sum()))
    labels = np.full(n, NOISE_LABEL, dtype=np.int64)
    for new, old in enumerate(order):
        labels[raw == old] = new
    sizes = np.array([int((labels == k).sum()) for k in range(len(order))], dtype=np.int64)
    warnings = []
    if len(order) == 0:
        warnings.append(f"HDBSCAN put every particle in its noise set (no class of at least {size} particles, "
                        f"{min_class_fraction:g} of {n}); lower --min-class-fraction or train longer")
    elif len(order) == 1:
        warnings.append(f"HDBSCAN found one class: no second group of at least {size} particles "
                        f"({min_class_fraction:g} of {n}) stands apart in the latent space; the data look "
                        "homogeneous at this size (lower --min-class-fraction to look for smaller classes)")
    return ClusteringResult(embedding=np.asarray(embedding, dtype=np.float32), labels=labels, n_classes=len(order),
                            sizes=sizes, n_noise=int((labels == NOISE_LABEL).sum()), min_cluster_size=size,
                            warnings=tuple(warnings))


def cluster_latents(latents: np.ndarray, *, min_class_fraction: float = 0.05, seed: int = 0) -> ClusteringResult:
    """:func:`embed_latents` then :func:`cluster_embedding` (module docstring)."""
    return cluster_embedding(embed_latents(latents, seed=seed), min_class_fraction=min_class_fraction)


def label_scores(truth: np.ndarray, labels: np.ndarray) -> dict:
    """NMI, ARI and AMI of estimated labels against true ones (scikit-learn).

    Returns:
        ``{"all": {...}, "assigned": {...}, "n_assigned": int}``: scores over every particle
        (noise counted as one label) and over the particles not in the noise set.
    """
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    truth, labels = np.asarray(truth), np.asarray(labels)

    def scores(t, e):
        if len(t) == 0:
            return {"nmi": None, "ari": None, "ami": None}
        return {"nmi": float(normalized_mutual_info_score(t, e)), "ari": float(adjusted_rand_score(t, e)),
                "ami": float(adjusted_mutual_info_score(t, e))}

    kept = labels != NOISE_LABEL
    return {"all": scores(truth, labels), "assigned": scores(truth[kept], labels[kept]), "n_assigned": int(kept.sum())}


def principal_component_spearman(latents: np.ndarray, values: np.ndarray) -> float:
    """``|Spearman ρ|`` between the latents' first principal component and ``values`` ``(N,)``."""
    from scipy.stats import spearmanr

    z = np.asarray(latents, dtype=np.float64)
    z = z - z.mean(axis=0)
    pc1 = np.linalg.svd(z, full_matrices=False)[0][:, 0] if z.shape[1] > 1 else z[:, 0]
    return float(abs(spearmanr(pc1, np.asarray(values)).statistic))
