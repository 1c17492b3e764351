"""Latent-orbit estimates (Miolane et al. eqs. 4-6) and outlier scoring on synthetic latents."""

from __future__ import annotations

import numpy as np
import pytest

from cryopose.analysis.latent_geometry import (angle_from_polar, confidence_weights, defocus_from_radius,
                                               fit_latent_pca, polar_coordinates)
from cryopose.analysis.latent_orbits import (OrbitAnalysisConfig, align_angles, analyze_latents, apply_alignment,
                                             circular_difference_deg, defocus_distribution_from)
from cryopose.analysis.outliers import outlier_features, outlier_scores, roc_auc, roc_curve

DEFOCI = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def _cone_latents(n=3000, *, k=1, shift_deg=40.0, sign=1, noise=0.002, seed=0, rotate=True):
    """Latents on a cone: angle s·k·ψ + c about the axis, radius growing with defocus."""
    rng = np.random.default_rng(seed)
    psi = rng.uniform(0, 360, n)
    df = rng.permutation(np.resize(np.asarray(DEFOCI), n))  # equal shares, as the simulator makes them
    r = 0.5 + 0.3 * df
    a = np.radians(sign * k * psi + shift_deg)
    z = np.stack([r * np.cos(a), r * np.sin(a), 0.2 * r], axis=1) + noise * rng.standard_normal((n, 3))
    if rotate:  # an arbitrary orthonormal frame: PCA must find the orbit plane
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        z = z @ q.T + np.array([0.3, -1.0, 2.0])
    return z, psi, df


@pytest.mark.parametrize("sign", [1, -1])
def test_polar_angle_recovers_psi_up_to_sign_and_shift(sign):
    z, psi, df = _cone_latents(sign=sign)
    pca = fit_latent_pca(z)
    comps = pca.transform(z)
    r, phi = polar_coordinates(comps)
    al = align_angles(psi, angle_from_polar(phi), weights=confidence_weights(df))
    assert al.rmse_deg < 1.0
    # the PCA axis signs are arbitrary, so only the product with the latent's sign is fixed
    assert al.sign in (1, -1)
    assert np.abs(circular_difference_deg(apply_alignment(angle_from_polar(phi), al), psi)).max() < 2.0
    # a random estimate is far off
    rng = np.random.default_rng(1)
    assert align_angles(psi, rng.uniform(0, 360, psi.size)).rmse_deg > 60


def test_align_angles_finds_known_sign_and_shift():
    rng = np.random.default_rng(2)
    t = rng.uniform(0, 360, 500)
    est = (-(t - 123.0)) % 360.0  # t = −est + 123
    al = align_angles(t, est)
    assert al.sign == -1 and al.shift_deg == pytest.approx(123.0, abs=1e-6) and al.rmse_deg < 1e-6
    with pytest.raises(ValueError):
        align_angles(t, est[:10])


def test_symmetric_view_gives_quotient_orbit():
    z, psi, df = _cone_latents(k=2)
    comps = fit_latent_pca(z).transform(z)
    r, phi = polar_coordinates(comps)
    two = align_angles(psi, angle_from_polar(phi, symmetry_order=2), symmetry_order=2)
    assert two.period_deg == 180.0 and two.rmse_deg < 1.0
    one = align_angles(psi, angle_from_polar(phi, symmetry_order=1))
    assert one.rmse_deg > 30.0  # read as a full circle, the doubled angle is wrong


def test_defocus_quantile_mapping():
    z, psi, df = _cone_latents()
    r, _ = polar_coordinates(fit_latent_pca(z).transform(z))
    est = defocus_from_radius(r, defocus_values=DEFOCI)
    assert np.array_equal(est, df)
    wrong = defocus_from_radius(r, defocus_values=DEFOCI, increasing=False)
    assert np.sqrt(np.mean((wrong - df) ** 2)) > 1.0
    cont = defocus_from_radius(np.arange(11.0), defocus_range=(1.0, 2.0))
    assert cont[0] == pytest.approx(1.0 + 1 / 22) and cont[-1] == pytest.approx(2.0 - 1 / 22)
    assert np.all(np.diff(cont) > 0)
    with pytest.raises(ValueError):
        defocus_from_radius(r)


def test_confidence_weights_and_distribution():
    assert confidence_weights([0.0, 1.0]) == pytest.approx([0.0, np.e - 1])
    assert defocus_distribution_from(np.array([1.0, 2.0, 1.0])) == {"defocus_values_um": (1.0, 2.0)}
    assert "defocus_range_um" in defocus_distribution_from(np.linspace(1, 2, 50))


def test_roc_auc_known_case():
    # scikit-learn's documented example: AUC 0.75
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    assert roc_auc(scores, 1 - labels) == pytest.approx(0.25)
    assert roc_auc(np.ones(4), labels) == pytest.approx(0.5)
    fpr, tpr, _ = roc_curve(scores, labels)
    assert fpr[0] == 0 and tpr[-1] == 1
    with pytest.raises(ValueError):
        roc_auc(scores, np.zeros(4))


def test_detectors_flag_far_points():
    rng = np.random.default_rng(3)
    far = rng.standard_normal((30, 3))
    far = far / np.linalg.norm(far, axis=1, keepdims=True) * rng.uniform(5, 8, (30, 1))  # scattered, far
    x = np.vstack([rng.standard_normal((300, 3)), far])
    y = np.r_[np.zeros(300), np.ones(30)]
    scores = outlier_scores(x, contamination=0.1)
    assert set(scores) == {"isolation_forest", "local_outlier_factor", "robust_covariance"}
    for s in scores.values():
        assert roc_auc(s, y) > 0.95
    with pytest.raises(ValueError):
        outlier_features(x, feature_set="posterior")


def test_analyze_latents_end_to_end_with_outliers():
    z, psi, df = _cone_latents(n=3000)
    rng = np.random.default_rng(4)
    junk = rng.standard_normal((50, 3)) * 3.0
    mu = np.vstack([z, junk])
    labels = np.r_[np.zeros(3000, int), np.ones(50, int)]
    psi_all = np.r_[psi, rng.uniform(0, 360, 50)]
    df_all = np.r_[df, rng.choice(DEFOCI, 50)]
    cfg = OrbitAnalysisConfig(defocus_values_um=DEFOCI, radius_direction="increasing", outlier_features="mean",
                              contamination=0.02, exclude_outliers_from_fit=True)
    an = analyze_latents(mu, config=cfg, true_psi_deg=psi_all, true_defocus_um=df_all, outlier_labels=labels)
    m = an.metrics
    assert m["angle_rmse_weighted_deg"] < 1.0
    assert m["defocus_rmse_um"] < 0.15
    assert max(m["outlier_auc"].values()) > 0.9
    assert an.psi_deg.shape == (3050,) and np.isnan(an.alignment.errors_deg[3000:]).all()
    with pytest.raises(ValueError):
        OrbitAnalysisConfig(radius_direction="sideways")
    with pytest.raises(ValueError):
        analyze_latents(mu, config=OrbitAnalysisConfig(outlier_features="mean"))  # auto needs contrast
