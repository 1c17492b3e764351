"""Outlier scores of particles from their latent representation, and ROC analysis.

Miolane et al. (CVPR-W 2020) flag junk particles (noise, ice, other molecules, off-centre
picks) as outliers of the VAE-GAN latent space. Three scikit-learn detectors are used, each
turned into a score that is **larger for more outlying particles**:

* ``isolation_forest``: ``−IsolationForest.score_samples`` (Liu et al. 2008);
* ``local_outlier_factor``: the LOF ``−negative_outlier_factor_`` (Breunig et al. 2000);
* ``robust_covariance``: the Mahalanobis distance² under the minimum covariance determinant
  estimate (``EllipticEnvelope``, Rousseeuw & Van Driessen 1999).

Features are standardised (zero mean, unit variance per column) first. Which features:
:func:`outlier_features` builds them from the latent means ``μ`` (``"mean"``, the paper's
latent space), the full Gaussian posterior ``(μ, log σ²)`` (``"posterior"``, the default: junk
that the encoder cannot place on the orbit gets an unusual posterior width), optionally with
the per-image reconstruction loss (``"posterior+rec"``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["OUTLIER_METHODS", "FEATURE_SETS", "outlier_features", "outlier_scores", "roc_curve", "roc_auc"]

OUTLIER_METHODS = ("isolation_forest", "local_outlier_factor", "robust_covariance")
FEATURE_SETS = ("mean", "posterior", "posterior+rec")


def outlier_features(mu, logvar=None, reconstruction_loss=None, *, feature_set: str = "posterior") -> np.ndarray:
    """Stack the per-particle features used by the detectors.

    Args:
        mu: ``(N, L)`` latent means.
        logvar: ``(N, L)`` latent log-variances (for ``posterior*``).
        reconstruction_loss: ``(N,)`` per-image reconstruction loss (for ``posterior+rec``).
        feature_set: One of :data:`FEATURE_SETS`.

    Returns:
        ``(N, D)`` float64 features.

    Raises:
        ValueError: Unknown feature set or a missing input it needs.
    """
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown outlier feature set {feature_set!r}; choose from {', '.join(FEATURE_SETS)}")
    cols = [np.asarray(mu, dtype=np.float64)]
    if feature_set.startswith("posterior"):
        if logvar is None:
            raise ValueError(f"feature set {feature_set!r} needs the latent log-variances")
        cols.append(np.asarray(logvar, dtype=np.float64))
    if feature_set == "posterior+rec":
        if reconstruction_loss is None:
            raise ValueError("feature set 'posterior+rec' needs the per-image reconstruction loss")
        cols.append(np.asarray(reconstruction_loss, dtype=np.float64).reshape(-1, 1))
    return np.hstack(cols)


def outlier_scores(features, *, methods=OUTLIER_METHODS, contamination: float = 0.1, n_neighbors: int = 20,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Outlier scores of every particle by each detector (larger = more outlying).

    Args:
        features: ``(N, D)`` features (:func:`outlier_features`).
        methods: Subset of :data:`OUTLIER_METHODS`.
        contamination: Expected outlier fraction in (0, 0.5), used by the robust covariance
            fit (the share of points left out of the MCD support) and to set the Isolation
            Forest / LOF decision thresholds (scores are continuous and do not depend on it).
        n_neighbors: LOF neighbourhood size (capped at ``N − 1``).
        seed: Random state of the Isolation Forest and the MCD.

    Returns:
        ``{method: (N,) float64 scores}``.

    Raises:
        ValueError: Unknown method, fewer than 3 particles or a contamination outside (0, 0.5).
    """
    from sklearn.covariance import EllipticEnvelope
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] < 3:
        raise ValueError(f"need at least 3 particles for outlier detection, got {x.shape[0]}")
    if not (0.0 < contamination < 0.5):
        raise ValueError(f"contamination must be in (0, 0.5), got {contamination}")
    bad = [m for m in methods if m not in OUTLIER_METHODS]
    if bad:
        raise ValueError(f"unknown outlier method(s) {', '.join(bad)}; choose from {', '.join(OUTLIER_METHODS)}")
    x = StandardScaler().fit_transform(x)
    x = np.nan_to_num(x)
    out: dict[str, np.ndarray] = {}
    for m in methods:
        if m == "isolation_forest":
            f = IsolationForest(n_estimators=200, contamination=contamination, random_state=seed).fit(x)
            out[m] = -f.score_samples(x)
        elif m == "local_outlier_factor":
            k = max(1, min(int(n_neighbors), x.shape[0] - 1))
            f = LocalOutlierFactor(n_neighbors=k, contamination=contamination).fit(x)
            out[m] = -f.negative_outlier_factor_
        else:
            f = EllipticEnvelope(contamination=contamination, random_state=seed).fit(x)
            out[m] = f.mahalanobis(x)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _check_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if s.shape != y.shape:
        raise ValueError(f"{s.shape[0]} scores but {y.shape[0]} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("outlier labels must be 0 (particle) or 1 (outlier)")
    if y.min() == y.max():
        raise ValueError("ROC needs both particles and outliers among the labels")
    return s, y


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of scores (larger = outlier) against 0/1 labels (1 = outlier).

    Returns:
        ``(false positive rate, true positive rate, thresholds)`` (scikit-learn's ``roc_curve``).

    Raises:
        ValueError: Mismatched lengths, labels other than 0/1, or one class only.
    """
    from sklearn.metrics import roc_curve as _roc

    s, y = _check_labels(scores, labels)
    fpr, tpr, thr = _roc(y, s)
    return fpr, tpr, thr


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: the probability that a random outlier scores above a random
    particle (ties count one half). Raises like :func:`roc_curve`."""
    s, y = _check_labels(scores, labels)
    pos, neg = s[y == 1], s[y == 0]
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))
