"""In-plane angle and defocus from the geometry of a latent space (Miolane et al., CVPR-W 2020).

For particles of one view that differ by an in-plane rotation ``ψ`` and a defocus ``Δf``, a
VAE latent space holds one closed orbit per defocus: the images ``I(ψ, Δf)`` for ``ψ`` in
[0°, 360°) make a circle, and circles of larger defocus lie further from the axis (a cone,
which the VAE-GAN's cone prior asks for). The paper reads the parameters off that geometry:

* **PCA** of the latent means ``μ_i`` (centred on their mean): ``p_i = Vᵀ (μ_i − μ̄)``.
* **Eq. 4, polar coordinates** of the first two components:
  ``r_i = sqrt(p_i1² + p_i2²)``, ``φ_i = atan2(p_i2, p_i1)`` in [0°, 360°).
  (about the latent mean; with a finite sample the mean misses the orbits' centre by about
  ``r / sqrt(N)``, an angle error of that order in radians).
  The in-plane angle estimate is ``ψ̂_i = φ_i / k mod 360°/k`` for a view whose projection
  has a ``k``-fold rotational symmetry (``k = 1`` otherwise): the orbit of such a view is
  the quotient circle, travelled ``k`` times as ``ψ`` goes round once. The angle is known only
  up to a global offset and a reflection (the latent has no reference frame).
* **Eq. 5, defocus from the radius**: ``r`` grows with ``Δf`` along the cone, so ``r`` is mapped
  to defocus by matching quantiles with the known defocus distribution — the paper's
  quartile mapping, generalised to every quantile: ``Δf̂_i = G⁻¹(F̂_r(r_i))`` with ``F̂_r``
  the empirical distribution function of the radii (mid-ranks) and ``G`` the defocus
  distribution (uniform on ``[Δf_min, Δf_max]``, or equal shares of given values).
* **Confidence** ``w_i = exp(Δf_i / µm) − 1``: images of larger defocus carry more
  low-frequency contrast and give better angles (the paper's weights).
* **Eq. 6, weighted error** ``min_{s ∈ {±1}, c} sqrt(Σ w_i d(ψ_i, s ψ̂_i + c)² / Σ w_i)`` with
  ``d`` the circular difference (modulo ``360°/k``): the best global shift ``c`` and sign ``s``
  are removed before the angle error is measured (:func:`align_angles`).

Sign convention (verified with the projector): RELION's ``ψ`` turns the projection of
``ψ = 0`` by ``−ψ`` (clockwise in ``(x, y)``, see :mod:`cryopose.training.rotinv`). The
rotation-equivariance prior of :mod:`cryopose.training.latent` makes ``φ`` increase with ``ψ``
(``s = +1``); without it the sign is whatever the training found.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .latent_geometry import (LatentPCA, angle_from_polar, confidence_weights, defocus_from_radius, fit_latent_pca,
                              polar_coordinates)

__all__ = [
    "AngleAlignment", "circular_difference_deg", "align_angles", "apply_alignment", "weighted_rmse",
    "lowpass_contrast", "radius_direction_from_contrast", "OrbitAnalysisConfig", "LatentAnalysis", "analyze_latents",
    "reference_values", "defocus_distribution_from", "analyze_checkpoint",
]


def circular_difference_deg(a, b, *, period: float = 360.0) -> np.ndarray:
    """``a − b`` wrapped to ``[−period/2, period/2)`` (degrees)."""
    d = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) + period / 2.0) % period
    return d - period / 2.0


@dataclasses.dataclass(frozen=True)
class AngleAlignment:
    """Result of :func:`align_angles` (eq. 6).

    Attributes:
        sign: ``+1`` or ``−1``: the estimate runs with (or against) the truth.
        shift_deg: Global offset ``c`` in degrees, in [0, period).
        rmse_deg: Weighted root-mean-square circular error after alignment, degrees.
        errors_deg: ``(N,)`` signed circular errors ``ψ − (s ψ̂ + c)`` in ``[−period/2, period/2)``.
        period_deg: The period the angles were compared modulo (``360 / k``).
    """

    sign: int
    shift_deg: float
    rmse_deg: float
    errors_deg: np.ndarray
    period_deg: float


def weighted_rmse(errors, weights=None) -> float:
    """``sqrt(Σ w e² / Σ w)`` (plain RMSE without weights)."""
    e = np.asarray(errors, dtype=np.float64)
    w = np.ones_like(e) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(math.sqrt(np.sum(w * e**2) / np.sum(w)))


def align_angles(true_deg, est_deg, *, weights=None, symmetry_order: int = 1, n_grid: int = 720) -> AngleAlignment:
    """Eq. 6: weighted circular error after the best global sign and shift.

    For each sign the shift minimising ``Σ w d(ψ, s ψ̂ + c)²`` is found by a grid search over
    ``n_grid`` shifts followed by fixed-point refinement (the weighted mean of the wrapped
    residuals). Angles are compared modulo ``360° / symmetry_order``.

    Args:
        true_deg: ``(N,)`` reference angles (degrees, e.g. ``rlnAnglePsi``).
        est_deg: ``(N,)`` estimates (degrees).
        weights: ``(N,)`` non-negative weights (:func:`confidence_weights`); uniform if ``None``.
        symmetry_order: ``k`` of a ``k``-fold symmetric projection.
        n_grid: Shifts tried per sign before refinement.

    Returns:
        :class:`AngleAlignment`.

    Raises:
        ValueError: Mismatched lengths, empty input or weights that sum to 0.
    """
    t = np.asarray(true_deg, dtype=np.float64).reshape(-1)
    e = np.asarray(est_deg, dtype=np.float64).reshape(-1)
    if t.shape != e.shape or t.size == 0:
        raise ValueError(f"need two equal-length non-empty angle arrays, got {t.shape} and {e.shape}")
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != t.shape or not np.all(w >= 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per angle, with a positive sum")
    k = int(symmetry_order)
    period = 360.0 / k
    best = None
    grid = np.linspace(0.0, period, int(n_grid), endpoint=False)
    sub = np.linspace(0, t.size - 1, min(t.size, 4000)).astype(np.int64)  # grid search on a subset
    for s in (1, -1):
        base = t - s * e
        costs = [np.sum(w[sub] * circular_difference_deg(base[sub], c, period=period) ** 2) for c in grid]
        c = float(grid[int(np.argmin(costs))])
        for _ in range(50):
            step = np.sum(w * circular_difference_deg(base, c, period=period)) / np.sum(w)
            c += step
            if abs(step) < 1e-10:
                break
        err = circular_difference_deg(base, c, period=period)
        rmse = weighted_rmse(err, w)
        if best is None or rmse < best.rmse_deg:
            best = AngleAlignment(sign=s, shift_deg=float(c % period), rmse_deg=rmse, errors_deg=err,
                                  period_deg=period)
    return best


def apply_alignment(est_deg, alignment: AngleAlignment) -> np.ndarray:
    """``s ψ̂ + c`` wrapped to ``[0, period)``: estimates in the reference's frame."""
    return (alignment.sign * np.asarray(est_deg, dtype=np.float64) + alignment.shift_deg) % alignment.period_deg


def lowpass_contrast(images, *, cutoff_fraction: float = 0.25) -> np.ndarray:
    """Variance of each image after a low-pass at ``cutoff_fraction`` × Nyquist.

    A rotation-invariant, label-free statistic that grows with defocus for weak-phase objects
    (``CTF ≈ sin(π λ Δf k²)`` at low ``k``): used to decide whether the latent radius grows or
    shrinks with defocus (:func:`radius_direction_from_contrast`).

    Args:
        images: ``(N, n, n)`` array or tensor.
        cutoff_fraction: Low-pass radius as a fraction of Nyquist, in (0, 1].

    Returns:
        ``(N,)`` float64 variances.
    """
    import torch

    from ..fourier import centered_fft2, centered_ifft2, frequency_indices

    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).to(torch.float64)
    n = x.shape[-1]
    k = frequency_indices(n, dtype=torch.float64)
    mask = ((k[:, None] ** 2 + k[None, :] ** 2) <= (cutoff_fraction * n / 2.0) ** 2).to(torch.float64)
    mask[n // 2, n // 2] = 0.0  # remove the mean
    out = []
    for start in range(0, x.shape[0], 1024):
        low = centered_ifft2(centered_fft2(x[start:start + 1024]) * mask).real
        out.append(low.pow(2).mean(dim=(-2, -1)))
    return torch.cat(out).numpy()


def radius_direction_from_contrast(radius, contrast, *, mask=None) -> bool:
    """``True`` if the latent radius grows with defocus, judged by its Spearman correlation
    with :func:`lowpass_contrast` (which grows with defocus)."""
    from scipy.stats import spearmanr

    r = np.asarray(radius, dtype=np.float64)
    c = np.asarray(contrast, dtype=np.float64)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        r, c = r[m], c[m]
    rho = spearmanr(r, c).statistic
    return bool(not np.isfinite(rho) or rho >= 0)


# --------------------------------------------------------------------------------------------
# The whole analysis of a latent space
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrbitAnalysisConfig:
    """Options of :func:`analyze_latents`.

    Attributes:
        symmetry_order: ``k`` of the view's ``k``-fold symmetric projection (1 = none).
        defocus_values_um: Known discrete defocus values (µm), in equal shares.
        defocus_range_um: Known ``(min, max)`` defocus (µm), uniform; used without values.
        radius_direction: ``"auto"`` (:func:`radius_direction_from_contrast`, needs the
            images' low-pass contrast), ``"increasing"`` or ``"decreasing"``.
        outlier_features: Feature set of :func:`cryopose.analysis.outliers.outlier_features`.
        outlier_methods: Detectors to run.
        primary_outlier_method: The detector whose score is ``rlnCryoposeOutlierScore``.
        contamination: Expected outlier fraction (detector thresholds, and the share of the
            highest-scoring particles left out of the PCA and defocus fits when
            ``exclude_outliers_from_fit``).
        exclude_outliers_from_fit: Fit the PCA and the radius quantiles on the particles the
            primary detector ranks below its ``1 − contamination`` quantile (off by default: a
            detector that also drops part of the outer orbit unevenly moves the centre).
        lof_neighbors: LOF neighbourhood size.
        seed: Random state of the detectors.
        angle_from: ``"auto"``: from the equivariant latent planes when the model was trained
            with the rotation-equivariance prior (``planes`` of :func:`analyze_latents`: the
            polar angle of ``(μ₁, μ₂)`` about the mean divided by ``k``, refined by the second
            plane with :func:`cryopose.analysis.latent_geometry.combine_planes`), else as
            ``"pca"``; ``"pca"``: the paper's eq. 4 on PC1-PC2 (which picks the defocus axis
            when the defocus spreads the latent more than the in-plane orbit does).

    Raises:
        ValueError: Bad values (on construction).
    """

    symmetry_order: int = 1
    defocus_values_um: tuple[float, ...] | None = None
    defocus_range_um: tuple[float, float] | None = None
    radius_direction: str = "auto"
    outlier_features: str = "posterior"
    outlier_methods: tuple[str, ...] = ("isolation_forest", "local_outlier_factor", "robust_covariance")
    primary_outlier_method: str = "robust_covariance"
    contamination: float = 0.1
    exclude_outliers_from_fit: bool = False
    lof_neighbors: int = 20
    seed: int = 0
    angle_from: str = "auto"

    def __post_init__(self):
        from .outliers import FEATURE_SETS, OUTLIER_METHODS

        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.defocus_values_um is not None:
            put("defocus_values_um", tuple(float(v) for v in self.defocus_values_um))
            if not self.defocus_values_um:
                raise ValueError("defocus_values_um is empty")
        if self.defocus_range_um is not None:
            put("defocus_range_um", tuple(float(v) for v in self.defocus_range_um))
            lo, hi = self.defocus_range_um
            if not (len(self.defocus_range_um) == 2 and hi >= lo):
                raise ValueError(f"defocus range must be (min, max) with max >= min, got {self.defocus_range_um}")
        put("outlier_methods", tuple(self.outlier_methods))
        if int(self.symmetry_order) < 1:
            raise ValueError(f"symmetry order must be >= 1, got {self.symmetry_order}")
        if self.angle_from not in ("auto", "pca"):
            raise ValueError(f"angle source must be auto or pca, got {self.angle_from!r}")
        if self.radius_direction not in ("auto", "increasing", "decreasing"):
            raise ValueError(f"radius direction must be auto, increasing or decreasing, got {self.radius_direction!r}")
        if self.outlier_features not in FEATURE_SETS:
            raise ValueError(f"unknown outlier features {self.outlier_features!r}; choose from {', '.join(FEATURE_SETS)}")
        bad = [m for m in self.outlier_methods if m not in OUTLIER_METHODS]
        if bad or not self.outlier_methods:
            raise ValueError(f"outlier methods must be among {', '.join(OUTLIER_METHODS)}, got {self.outlier_methods}")
        if self.primary_outlier_method not in self.outlier_methods:
            raise ValueError(f"primary outlier method {self.primary_outlier_method!r} is not among the methods run")
        if not (0.0 < self.contamination < 0.5):
            raise ValueError(f"contamination must be in (0, 0.5), got {self.contamination}")


@dataclasses.dataclass
class LatentAnalysis:
    """Everything :func:`analyze_latents` estimates (arrays have one row per particle).

    Attributes:
        pca: The :class:`LatentPCA`.
        components: ``(N, L)`` principal components.
        center: ``(2,)`` origin of the polar coordinates in PC1-PC2.
        radius, polar_angle_deg: Eq. 4 on the first two components.
        psi_deg: In-plane angle estimate ``φ / k`` (degrees, up to a global sign and offset).
        defocus_um: Defocus estimate (µm), or ``None`` without a known defocus distribution.
        confidence: ``exp(Δf̂ / µm) − 1`` (``None`` without a defocus estimate).
        outlier_scores: ``{method: (N,) scores}``, larger = more outlying.
        fit_mask: ``(N,)`` particles used for the PCA and the defocus fit.
        radius_increasing: Whether the radius was taken to grow with defocus.
        alignment: Eq. 6 alignment against the true angles (``None`` without them).
        metrics: Numbers against the ground truth that was given (empty without).
    """

    pca: LatentPCA
    components: np.ndarray
    center: np.ndarray
    radius: np.ndarray
    polar_angle_deg: np.ndarray
    psi_deg: np.ndarray
    defocus_um: np.ndarray | None
    confidence: np.ndarray | None
    outlier_scores: dict
    fit_mask: np.ndarray
    radius_increasing: bool
    alignment: AngleAlignment | None = None
    metrics: dict = dataclasses.field(default_factory=dict)


def analyze_latents(mu, *, config: OrbitAnalysisConfig, logvar=None, reconstruction_loss=None, contrast=None,
                    true_psi_deg=None, true_defocus_um=None, outlier_labels=None, planes=(), images=None,
                    image_pixel_size_angstrom=None) -> LatentAnalysis:
    """In-plane angles, defocus and outlier scores from latent codes (Miolane et al. 2020).

    Steps: outlier scores (:mod:`cryopose.analysis.outliers`); PCA of the latent means of the
    likely inliers; eq. 4 polar coordinates → ``ψ̂``; eq. 5 quantile mapping of the radius →
    ``Δf̂``; confidence ``exp(Δf̂) − 1``; with ground truth, eq. 6 errors and ROC AUCs.

    Args:
        mu: ``(N, L)`` latent means.
        config: :class:`OrbitAnalysisConfig`.
        logvar: ``(N, L)`` log-variances (needed by the ``posterior`` outlier features).
        reconstruction_loss: ``(N,)`` (needed by ``posterior+rec``).
        contrast: ``(N,)`` :func:`lowpass_contrast` of the images (for ``radius_direction="auto"``).
        true_psi_deg: ``(N,)`` reference ``rlnAnglePsi`` (degrees) for the metrics.
        true_defocus_um: ``(N,)`` reference defocus (µm) for the metrics and the paper's weights.
        outlier_labels: ``(N,)`` 0/1 (1 = junk) for ROC AUCs; angle and defocus errors are then
            measured on the true particles only.
        planes: The model's equivariant planes, ``((j, k), ...)``
            (:meth:`cryopose.training.latent_config.LatentTrainConfig.equivariant_planes`;
            empty for the paper's model): with ``config.angle_from="auto"`` the angle is read
            from them instead of the PCA.
        images: Callable ``f(index_array) -> (B, m, m)`` tensor of the network's input images,
            used to pick the 180° branch when the first plane is flat (``None``: no images).
        image_pixel_size_angstrom: Pixel size of those images (Å), for the branch's low-pass.

    Returns:
        :class:`LatentAnalysis`.

    Raises:
        ValueError: Inconsistent lengths or ``radius_direction="auto"`` without ``contrast``.
    """
    from .latent_branch import angles_from_planes
    from .outliers import outlier_features, outlier_scores

    z = np.asarray(mu, dtype=np.float64)
    n = z.shape[0]
    feats = outlier_features(z, logvar, reconstruction_loss, feature_set=config.outlier_features)
    scores = outlier_scores(feats, methods=config.outlier_methods, contamination=config.contamination,
                            n_neighbors=config.lof_neighbors, seed=config.seed)
    primary = scores[config.primary_outlier_method]
    if config.exclude_outliers_from_fit:
        fit_mask = primary <= np.quantile(primary, 1.0 - config.contamination)
    else:
        fit_mask = np.ones(n, dtype=bool)
    pca = fit_latent_pca(z, fit_mask=fit_mask)
    comps = pca.transform(z)
    center = np.zeros(2)
    radius, phi = polar_coordinates(comps, center)
    psi = angle_from_polar(phi, symmetry_order=config.symmetry_order)
    plane_info: dict = {}
    use_planes = config.angle_from == "auto" and len(planes) > 0
    if use_planes:
        psi, plane_info = angles_from_planes(z, tuple(planes), config.symmetry_order, fit_mask, images,
                                              image_pixel_size_angstrom)
    if config.radius_direction == "auto":
        if contrast is None:
            raise ValueError("radius_direction='auto' needs the images' low-pass contrast")
        increasing = radius_direction_from_contrast(radius, contrast, mask=fit_mask)
    else:
        increasing = config.radius_direction == "increasing"
    defocus = confidence = None
    if config.defocus_values_um is not None or config.defocus_range_um is not None:
        defocus = defocus_from_radius(radius, defocus_values=config.defocus_values_um,
                                      defocus_range=config.defocus_range_um, increasing=increasing,
                                      fit_mask=fit_mask)
        confidence = confidence_weights(defocus)
    result = LatentAnalysis(pca=pca, components=comps, center=center, radius=radius, polar_angle_deg=phi, psi_deg=psi,
                            defocus_um=defocus, confidence=confidence, outlier_scores=scores, fit_mask=fit_mask,
                            radius_increasing=increasing)
    result.metrics = {"explained_variance_ratio": pca.explained_variance_ratio.tolist(),
                      "radius_increases_with_defocus": bool(increasing),
                      "angle_source": "equivariant planes" if use_planes else "pca", **plane_info}
    _score_against_truth(result, config, true_psi_deg=true_psi_deg, true_defocus_um=true_defocus_um,
                         outlier_labels=outlier_labels)
    return result


def _score_against_truth(result: LatentAnalysis, config: OrbitAnalysisConfig, *, true_psi_deg, true_defocus_um,
                         outlier_labels) -> None:
    """Add the metrics against known values to ``result.metrics`` (and the angle alignment to
    ``result.alignment``): outlier ROC AUCs, defocus RMSE and the eq. 6 angle errors, measured
    on the true particles only when ``outlier_labels`` are given (see :func:`analyze_latents`)."""
    from .outliers import roc_auc

    n = result.psi_deg.shape[0]
    metrics = result.metrics
    good = np.ones(n, dtype=bool)
    if outlier_labels is not None:
        labels = np.asarray(outlier_labels).astype(np.int64).reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"{labels.shape[0]} outlier labels for {n} particles")
        good = labels == 0
        metrics["n_outliers"] = int((labels == 1).sum())
        if 0 < labels.sum() < n:
            metrics["outlier_auc"] = {m: roc_auc(s, labels) for m, s in result.outlier_scores.items()}
    if true_defocus_um is not None:
        tdf = np.asarray(true_defocus_um, dtype=np.float64).reshape(-1)
        if result.defocus_um is not None:
            metrics["defocus_rmse_um"] = weighted_rmse((result.defocus_um - tdf)[good])
    if true_psi_deg is not None:
        tpsi = np.asarray(true_psi_deg, dtype=np.float64).reshape(-1)
        w = confidence_weights(true_defocus_um)[good] if true_defocus_um is not None else None
        if w is not None and not np.all(w > 0):
            w = None  # defocus of 0: the paper's weights are undefined
        al = align_angles(tpsi[good], result.psi_deg[good], weights=w, symmetry_order=config.symmetry_order)
        plain = weighted_rmse(al.errors_deg)
        errs = np.full(n, np.nan)
        errs[good] = al.errors_deg
        result.alignment = dataclasses.replace(al, errors_deg=errs)
        metrics.update({"angle_rmse_weighted_deg" if w is not None else "angle_rmse_deg": al.rmse_deg,
                        "angle_rmse_deg": plain, "angle_sign": al.sign, "angle_shift_deg": al.shift_deg,
                        "angle_period_deg": al.period_deg,
                        "angle_median_abs_error_deg": float(np.median(np.abs(al.errors_deg)))})


def reference_values(metadata) -> dict:
    """Reference values a particle table carries, for the metrics of :func:`analyze_latents`.

    Returns:
        ``{"psi_deg": (N,) or None, "defocus_um": (N,) or None, "outlier": (N,) 0/1 or None}``:
        ``rlnAnglePsi`` from the rotations (RELION convention), the mean of ``rlnDefocusU/V``
        in µm, and ``rlnCryoposeIsOutlier``.
    """
    from ..rotations import rotmat_to_relion_euler

    out: dict = {"psi_deg": None, "defocus_um": None, "outlier": None}
    if metadata.rotmats is not None:
        out["psi_deg"] = rotmat_to_relion_euler(metadata.rotmats.double())[:, 2].numpy() % 360.0
    if metadata.ctf is not None:
        c = metadata.ctf
        out["defocus_um"] = (0.5 * (c.defocus_u_angstrom + c.defocus_v_angstrom)).double().numpy() / 1e4
    table = metadata.table
    if table is not None and "rlnCryoposeIsOutlier" in table.columns:
        out["outlier"] = table["rlnCryoposeIsOutlier"].to_numpy().astype(np.int64)
    return out


def defocus_distribution_from(defocus_um, *, max_values: int = 12) -> dict:
    """The known-defocus options of :class:`OrbitAnalysisConfig` from a table's defocus.

    Returns ``{"defocus_values_um": ...}`` when there are at most ``max_values`` distinct
    values (rounded to 1 Å), else ``{"defocus_range_um": (min, max)}``.
    """
    d = np.round(np.asarray(defocus_um, dtype=np.float64) * 1e4) / 1e4
    vals = np.unique(d)
    if vals.size <= max_values:
        return {"defocus_values_um": tuple(float(v) for v in vals)}
    return {"defocus_range_um": (float(d.min()), float(d.max()))}


def analyze_checkpoint(checkpoint_path, stack, metadata=None, *, config: OrbitAnalysisConfig,
                       use_reference: bool = True, progress: bool = False):
    """Encode a data set with a trained VAE-GAN and run :func:`analyze_latents` on it.

    Args:
        checkpoint_path: ``checkpoint.pt`` of ``cryopose latent train``.
        stack: Images ``(N, n, n)`` (a :class:`~cryopose.io.particles.ParticleStack` or tensor)
            of the box the model was trained on.
        metadata: The particles' :class:`~cryopose.io.particles.ParticleMetadata` (for the
            reference values), or ``None``.
        config: Analysis options.
        use_reference: Compare with the table's angles, defocus and outlier labels.
        progress: Progress bars.

    Returns:
        ``(LatentAnalysis, LatentCodes, reference values dict)``.

    Raises:
        UserError: Unreadable checkpoint or images of another box than the model's.
    """
    from ..errors import UserError
    from ..training.latent import encode_latents, load_latent_checkpoint, prepare_batch

    model, scaling, train_config, ck = load_latent_checkpoint(checkpoint_path)
    first = stack[np.array([0])]
    if int(first.shape[-1]) != int(ck["box_size"]):
        raise UserError(f"images are {first.shape[-1]} px but the model was trained on {ck['box_size']} px images")
    codes = encode_latents(model, stack, train_config, scaling, progress=progress)
    apix = getattr(stack, "pixel_size_angstrom", None) or getattr(metadata, "pixel_size_angstrom", None)
    pixel = None if not apix else float(apix) * int(ck["box_size"]) / train_config.network_box(int(ck["box_size"]))
    contrast = None
    if config.radius_direction == "auto":
        parts = []
        for start in range(0, len(stack), 1024):
            parts.append(lowpass_contrast(stack[np.arange(start, min(len(stack), start + 1024))]))
        contrast = np.concatenate(parts)
    ref = reference_values(metadata) if (metadata is not None and use_reference) else {
        "psi_deg": None, "defocus_um": None, "outlier": None}
    analysis = analyze_latents(codes.mu, config=config, logvar=codes.logvar,
                               reconstruction_loss=codes.reconstruction_loss, contrast=contrast,
                               true_psi_deg=ref["psi_deg"], true_defocus_um=ref["defocus_um"],
                               outlier_labels=ref["outlier"], planes=train_config.equivariant_planes(),
                               images=lambda idx: prepare_batch(stack, idx, train_config, scaling),
                               image_pixel_size_angstrom=pixel)
    return analysis, codes, ref
