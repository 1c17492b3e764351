"""Figures of a latent-space analysis (the figures of Miolane et al., CVPR-W 2020).

* :func:`plot_latent_pca`: the first two principal components of the latent means, one
  panel coloured by the in-plane angle (cyclic colour map) and one by the defocus;
* :func:`plot_roc_curves`: ROC curves of the outlier detectors, with their AUC;
* :func:`plot_estimate_hexbin`: estimated against true values (in-plane angle after the
  global sign/shift alignment, or defocus) as a hexbin density, with the identity line.

Every function writes one PNG atomically (Agg backend, no display needed) and returns its
path. Plotting only: the numbers come from :mod:`cryopose.analysis`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_latent_pca", "plot_roc_curves", "plot_estimate_hexbin", "save_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    from ..io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_latent_pca(components, path, *, angle_deg=None, defocus_um=None, outlier=None,
                    angle_label: str = "in-plane angle ψ (°)", defocus_label: str = "defocus (µm)",
                    title: str = "Latent PCA") -> Path:
    """Scatter of PC1 vs PC2 of the latent means, coloured by angle and by defocus.

    Args:
        components: ``(N, >=2)`` principal components.
        path: Output PNG.
        angle_deg: ``(N,)`` angles for the first panel (cyclic ``twilight`` colours), or ``None``.
        defocus_um: ``(N,)`` defocus for the second panel, or ``None``.
        outlier: ``(N,)`` boolean; outliers are drawn as grey crosses.
        angle_label, defocus_label, title: Text.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    p = np.asarray(components, dtype=np.float64)
    panels = [(angle_deg, angle_label, "twilight", (0.0, 360.0)), (defocus_um, defocus_label, "viridis", None)]
    panels = [q for q in panels if q[0] is not None] or [(None, "", None, None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.6), squeeze=False,
                             constrained_layout=True)
    out = np.zeros(p.shape[0], dtype=bool) if outlier is None else np.asarray(outlier, dtype=bool)
    for ax, (values, label, cmap, lim) in zip(axes[0], panels):
        if out.any():
            ax.scatter(p[out, 0], p[out, 1], s=6, c="0.6", marker="x", linewidths=0.6, label="outlier")
        if values is None:
            ax.scatter(p[~out, 0], p[~out, 1], s=3, c="C0")
        else:
            v = np.asarray(values, dtype=np.float64)
            sc = ax.scatter(p[~out, 0], p[~out, 1], s=3, c=v[~out], cmap=cmap,
                            vmin=None if lim is None else lim[0], vmax=None if lim is None else lim[1])
            fig.colorbar(sc, ax=ax, label=label)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_aspect("equal", adjustable="datalim")
        if out.any():
            ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_roc_curves(curves: dict, path, *, title: str = "Outlier detection") -> Path:
    """ROC curves.

    Args:
        curves: ``{name: (fpr, tpr, auc)}``.
        path: Output PNG.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name.replace('_', ' ')} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_estimate_hexbin(true, estimate, path, *, label: str, unit: str, period: float | None = None,
                         title: str | None = None, gridsize: int = 40) -> Path:
    """Hexbin density of estimates against true values, with the identity line.

    Args:
        true, estimate: ``(N,)`` values.
        path: Output PNG.
        label: Quantity name (axis labels).
        unit: Unit shown on the axes.
        period: For angles, the period (axes span ``[0, period)``).
        title: Optional title.
        gridsize: Hexagons across.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    t = np.asarray(true, dtype=np.float64)
    e = np.asarray(estimate, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.9, 4.4))
    if period is not None:
        t, e = t % period, e % period
        lo, hi = 0.0, float(period)
    else:
        lo = float(min(t.min(), e.min()))
        hi = float(max(t.max(), e.max()))
        pad = 0.05 * (hi - lo if hi > lo else 1.0)
        lo, hi = lo - pad, hi + pad
    hb = ax.hexbin(t, e, gridsize=gridsize, extent=(lo, hi, lo, hi), mincnt=1, bins="log", cmap="magma_r")
    fig.colorbar(hb, ax=ax, label="particles")
    ax.plot([lo, hi], [lo, hi], color="C0", lw=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"true {label} ({unit})")
    ax.set_ylabel(f"estimated {label} ({unit})")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
