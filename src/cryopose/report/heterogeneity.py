"""Figures and HTML report of ``cryopose heterogeneity analyze``.

:func:`write_heterogeneity_report` draws the UMAP embedding coloured by class (HDBSCAN's noise
in grey) and, when the STAR holds a truth, by the true class or morph parameter; the class
sizes; the central slices of every class map; and the half-map FSC curves of the class maps,
then writes ``report.html`` beside the PNGs (:func:`cryopose.report.html.render_html`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import _figure, _save, plot_central_slices
from .html import render_html

__all__ = ["plot_embedding", "plot_class_sizes", "write_heterogeneity_report"]


def plot_embedding(embedding: np.ndarray, values: np.ndarray, path, *, title: str, continuous: bool = False,
                   label: str = "class") -> Path:
    """Scatter of a 2D embedding ``(N, 2)`` coloured by ``values`` ``(N,)``.

    Discrete values: one colour per value, ``−1`` (noise) grey and labelled ``noise``, classes
    shown 1-based; ``continuous``: a colour bar.
    """
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(111)
    e = np.asarray(embedding)
    if continuous:
        sc = ax.scatter(e[:, 0], e[:, 1], c=values, s=3, cmap="viridis", linewidths=0)
        fig.colorbar(sc, ax=ax, label=label)
    else:
        for v in np.unique(values):
            sel = values == v
            name = "noise" if v < 0 else f"{label} {int(v) + 1}"
            ax.scatter(e[sel, 0], e[sel, 1], s=3, linewidths=0, label=name, color="lightgrey" if v < 0 else None)
        ax.legend(markerscale=4, fontsize=7, loc="best")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_class_sizes(sizes: np.ndarray, n_noise: int, path) -> Path:
    """Bar chart of the particles per class and in the noise set."""
    fig = _figure(5.0, 3.0)
    ax = fig.add_subplot(111)
    names = [str(k + 1) for k in range(len(sizes))] + ["noise"]
    ax.bar(names, list(sizes) + [n_noise], color=["C0"] * len(sizes) + ["lightgrey"])
    ax.set_xlabel("class")
    ax.set_ylabel("particles")
    return _save(fig, path)


def write_heterogeneity_report(adir: Path, *, clustering, summary: dict, class_maps: dict, fsc_curves: dict,
                               truth_class: np.ndarray | None = None, truth_morph: np.ndarray | None = None,
                               config: dict | None = None) -> Path:
    """Write ``adir/report.html`` and its PNGs.

    Args:
        adir: The analysis folder.
        clustering: :class:`cryopose.analysis.clustering.ClusteringResult`.
        summary: The analysis summary (numbers shown in the table).
        class_maps: ``{name: (n, n, n) map}`` (consensus and classes).
        fsc_curves: ``{name: (frequency_per_angstrom, fsc)}`` half-map FSC curves.
        truth_class: ``(N,)`` true classes (1-based; 0 = junk), or ``None``.
        truth_morph: ``(N,)`` true morph parameters, or ``None``.
        config: Shown at the end of the page.

    Returns:
        The report's path.
    """
    from ..io.atomic import atomic_write_text
    from ..metrics.fsc import plot_fsc

    figs = [("UMAP of the latents, coloured by class",
             plot_embedding(clustering.embedding, clustering.labels, adir / "umap_classes.png",
                            title=f"{clustering.n_classes} classes, {clustering.n_noise} noise").name)]
    if truth_class is not None:
        figs.append(("UMAP coloured by the true class (0 = junk)",
                     plot_embedding(clustering.embedding, np.asarray(truth_class) - 1, adir / "umap_truth.png",
                                    title="true class", label="true class").name))
    if truth_morph is not None:
        figs.append(("UMAP coloured by the true morph parameter",
                     plot_embedding(clustering.embedding, truth_morph, adir / "umap_morph.png",
                                    title="true morph parameter t", continuous=True, label="t").name))
    figs.append(("class sizes", plot_class_sizes(clustering.sizes, clustering.n_noise, adir / "class_sizes.png").name))
    for name, vol in class_maps.items():
        figs.append((f"{name}: central slices", plot_central_slices(vol, adir / f"{name}_slices.png", title=name).name))
    if fsc_curves:
        figs.append(("half-map FSC of the class maps",
                     plot_fsc(fsc_curves, adir / "fsc_classes.png", title="half-map FSC").name))
    rows = {k: v for k, v in summary.items() if not isinstance(v, (list, dict)) or k in ("class_sizes", "scores")}
    notes = list(summary.get("warnings", []))
    page = render_html("cryopose heterogeneity analysis", rows, figs, config=config, notes=notes)
    path = adir / "report.html"
    atomic_write_text(path, page)
    return path
