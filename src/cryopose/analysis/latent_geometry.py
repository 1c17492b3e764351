"""The latent-space geometry of Miolane et al. (CVPR-W 2020): PCA, polar coordinates, defocus from the radius.

The readout steps of :mod:`cryopose.analysis.latent_orbits` (its docstring derives them):
PCA of the latent means (:func:`fit_latent_pca`), eq. 4 polar coordinates of the first two
components (:func:`polar_coordinates`) and the in-plane angle they give for a ``k``-fold view
(:func:`angle_from_polar`), eq. 5 defocus by quantile mapping of the radius
(:func:`defocus_from_radius`) and the paper's confidence weights (:func:`confidence_weights`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["LatentPCA", "fit_latent_pca", "polar_coordinates", "angle_from_polar", "defocus_from_radius",
           "confidence_weights"]


@dataclasses.dataclass(frozen=True)
class LatentPCA:
    """Principal axes of a set of latent vectors.

    Attributes:
        mean: ``(L,)`` mean latent vector.
        components: ``(L, L)`` principal axes as rows, by decreasing variance.
        explained_variance: ``(L,)`` variance along each axis.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        """Fraction of the total variance along each axis."""
        tot = float(self.explained_variance.sum())
        return self.explained_variance / tot if tot > 0 else np.zeros_like(self.explained_variance)

    def transform(self, latents) -> np.ndarray:
        """Principal components ``(N, L)`` of latents ``(N, L)``."""
        return (np.asarray(latents, dtype=np.float64) - self.mean) @ self.components.T


def fit_latent_pca(latents, *, fit_mask=None) -> LatentPCA:
    """PCA of latent means (Miolane et al., Sec. 4).

    Args:
        latents: ``(N, L)`` latent means.
        fit_mask: Optional ``(N,)`` boolean mask of the latents to fit on (e.g. without the
            particles flagged as outliers); all are used by default.

    Returns:
        :class:`LatentPCA`. The sign of each axis is fixed so that its largest-magnitude
        loading is positive (deterministic output).

    Raises:
        ValueError: Fewer than 3 latents, or not a 2-D array.
    """
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 3:
        raise ValueError(f"need an (N >= 3, L) array of latents, got shape {z.shape}")
    fit = z if fit_mask is None else z[np.asarray(fit_mask, dtype=bool)]
    if fit.shape[0] < 3:
        raise ValueError("fewer than 3 latents left to fit the PCA on")
    mean = fit.mean(axis=0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    big = np.argmax(np.abs(vt), axis=1)
    vt = vt * np.sign(vt[np.arange(vt.shape[0]), big])[:, None]
    return LatentPCA(mean=mean, components=vt, explained_variance=s**2 / max(fit.shape[0] - 1, 1))


def polar_coordinates(components, center=None) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4: radius and polar angle of the first two principal components.

    Args:
        components: ``(N, >=2)`` principal components.
        center: ``(2,)`` origin of the polar coordinates in PC1-PC2 (default 0: the latent mean,
            as in the paper).

    Returns:
        ``(r, φ)``: ``(N,)`` radii (latent units) and angles in degrees in [0, 360).
    """
    p = np.asarray(components, dtype=np.float64)
    c = np.zeros(2) if center is None else np.asarray(center, dtype=np.float64)
    x, y = p[:, 0] - c[0], p[:, 1] - c[1]
    r = np.hypot(x, y)
    phi = np.degrees(np.arctan2(y, x)) % 360.0
    return r, phi


def angle_from_polar(phi_deg, *, symmetry_order: int = 1) -> np.ndarray:
    """In-plane angle estimate ``φ / k`` in [0°, 360°/k) for a ``k``-fold symmetric projection.

    Raises:
        ValueError: ``symmetry_order < 1``.
    """
    k = int(symmetry_order)
    if k < 1:
        raise ValueError(f"symmetry order must be >= 1, got {symmetry_order}")
    return (np.asarray(phi_deg, dtype=np.float64) % 360.0) / k


def _midranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return (rankdata(x, method="average") - 0.5) / x.shape[0]


def defocus_from_radius(radius, *, defocus_values=None, defocus_range=None, increasing: bool = True,
                        fit_mask=None) -> np.ndarray:
    """Eq. 5: defocus from the latent radius by quantile matching with the known defocus distribution.

    Args:
        radius: ``(N,)`` radii (:func:`polar_coordinates`).
        defocus_values: Known discrete defocus values (any unit; particles assumed in equal
            shares). The estimate is one of them.
        defocus_range: ``(min, max)`` of a uniform defocus distribution (same unit); used when
            ``defocus_values`` is not given.
        increasing: Radius grows with defocus (the cone; else it shrinks).
        fit_mask: Optional ``(N,)`` mask of the particles whose radii define the empirical
            distribution (e.g. inliers); the others are mapped through it too.

    Returns:
        ``(N,)`` defocus estimates in the unit of the inputs.

    Raises:
        ValueError: Neither values nor range given, or an empty/invalid one.
    """
    r = np.asarray(radius, dtype=np.float64)
    if not increasing:
        r = -r
    ref = r if fit_mask is None else r[np.asarray(fit_mask, dtype=bool)]
    if ref.size == 0:
        raise ValueError("no radii to fit the defocus mapping on")
    ref = np.sort(ref)
    # empirical CDF of the reference radii at every radius (mid-rank convention)
    lo = np.searchsorted(ref, r, side="left")
    hi = np.searchsorted(ref, r, side="right")
    u = np.clip((lo + hi) / (2.0 * ref.size), 0.0, 1.0)
    if defocus_values is not None:
        vals = np.sort(np.asarray(defocus_values, dtype=np.float64).reshape(-1))
        if vals.size == 0:
            raise ValueError("defocus_values is empty")
        idx = np.minimum((u * vals.size).astype(np.int64), vals.size - 1)
        return vals[idx]
    if defocus_range is None:
        raise ValueError("give defocus_values or defocus_range (the known defocus distribution)")
    a, b = (float(v) for v in defocus_range)
    if not b >= a:
        raise ValueError(f"defocus range ({a}, {b}) has max < min")
    return a + (b - a) * u


def confidence_weights(defocus_um) -> np.ndarray:
    """Paper weights ``w = exp(Δf / µm) − 1`` (defocus in micrometres)."""
    return np.expm1(np.asarray(defocus_um, dtype=np.float64))
