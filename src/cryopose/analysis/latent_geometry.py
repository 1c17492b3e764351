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
           "confidence_weights", "plane_angles", "combine_planes"]


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


def plane_angles(latents, planes, *, fit_mask=None) -> list[np.ndarray]:
    """Polar angles of the equivariant latent planes, about the latent mean.

    Args:
        latents: ``(N, L)`` latent means.
        planes: ``((j, k), ...)``: plane ``(μ_j, μ_j+1)`` (0-based ``j``) turned by ``−k θ`` in
            training (:meth:`cryopose.training.latent_config.LatentTrainConfig.equivariant_planes`).
        fit_mask: ``(N,)`` particles whose mean is the centre (all if ``None``).

    Returns:
        One ``(N,)`` array per plane: ``atan2`` of the centred plane, degrees in [0°, 360°).

    Raises:
        ValueError: A plane outside the latent's ``L`` axes.
    """
    z = np.asarray(latents, dtype=np.float64)
    m = np.ones(z.shape[0], dtype=bool) if fit_mask is None else np.asarray(fit_mask, dtype=bool)
    out = []
    for j, _ in planes:
        if j + 1 >= z.shape[1]:
            raise ValueError(f"plane ({j}, {j + 1}) needs at least {j + 2} latent axes, got {z.shape[1]}")
        p = z[:, j:j + 2] - z[m, j:j + 2].mean(axis=0)
        out.append(np.degrees(np.arctan2(p[:, 1], p[:, 0])) % 360.0)
    return out


def combine_planes(phi1_deg, phi2_deg, *, order1: int = 1, order2: int = 2, weights=None) -> tuple[np.ndarray, float]:
    """In-plane angle from a coarse plane of order ``k₁`` and a fine plane of order ``k₂``.

    ``ψ₁ = φ₁/k₁`` (modulo ``360°/k₁``) and ``ψ₂ = φ₂/k₂`` (modulo ``360°/k₂``) carry the same
    angle up to their own global offsets. The offset ``o`` between them is the circular mean
    of ``k₂ (ψ₁ − ψ₂)`` divided by ``k₂`` (well defined modulo ``360°/k₂``, which is all that is
    needed); the estimate is ``ψ₂ + o`` on the branch nearest ``ψ₁``:
    ``ψ̂ = ψ₁ − wrap(ψ₁ − ψ₂ − o)`` with ``wrap`` to ``[−180°/k₂, 180°/k₂)``. So the fine plane
    sets the precision and the coarse plane needs only to be right within ``±180°/k₂``.

    Args:
        phi1_deg, phi2_deg: ``(N,)`` polar angles (degrees) of the two planes (:func:`plane_angles`).
        order1, order2: ``k₁`` and ``k₂`` (``k₂`` a multiple of ``k₁``, larger than it).
        weights: ``(N,)`` non-negative weights of the offset's mean (uniform if ``None``).

    Returns:
        ``(ψ̂ in [0°, 360°/k₁) as (N,) degrees, R)``: ``R`` in [0, 1] is the resultant length of
        ``k₂ (ψ₁ − ψ₂)`` — near 1 when the two planes agree, near 0 when one is noise.

    Raises:
        ValueError: Orders that are not ``1 <= k₁ < k₂`` with ``k₂`` a multiple of ``k₁``, or
            arrays of other lengths.
    """
    k1, k2 = int(order1), int(order2)
    if not (1 <= k1 < k2 and k2 % k1 == 0):
        raise ValueError(f"need 1 <= order1 < order2 with order2 a multiple of order1, got {k1} and {k2}")
    p1 = np.asarray(phi1_deg, dtype=np.float64).reshape(-1) / k1
    p2 = (np.asarray(phi2_deg, dtype=np.float64).reshape(-1) / k2) % (360.0 / k2)
    if p1.shape != p2.shape:
        raise ValueError(f"need two equal-length angle arrays, got {p1.shape} and {p2.shape}")
    w = np.ones_like(p1) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    a = np.radians(k2 * (p1 - p2))
    c, s = np.sum(w * np.cos(a)), np.sum(w * np.sin(a))
    resultant = float(np.hypot(c, s) / max(np.sum(w), 1e-300))
    offset = np.degrees(np.arctan2(s, c)) / k2
    period2 = 360.0 / k2
    wrapped = (p1 - p2 - offset + period2 / 2.0) % period2 - period2 / 2.0
    return (p1 - wrapped) % (360.0 / k1), resultant
