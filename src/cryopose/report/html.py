"""HTML reports of an ab initio run and of the demo: self-contained pages next to their PNG figures.

:func:`write_abinitio_report` draws the figures of :mod:`cryopose.report.figures` (loss curve,
half-map FSC, angular distribution, central slices, particles beside their predicted
projections) into ``OUTDIR`` and writes ``OUTDIR/report.html`` referring to them by relative
path, with a table of the run's numbers and its configuration. :func:`write_demo_report` writes
the demo's page: its numbers against the truth, the FSC against the true map and the viewing
directions in the asymmetric unit of the symmetry the poses were scored in.
"""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path

import numpy as np
import torch

from ..fourier import centered_ifft2
from ..symmetry import asymmetric_unit_mates
from .figures import (plot_angular_distribution, plot_central_slices, plot_image_pairs, plot_loss_curve,
                      plot_noise_spectrum)

__all__ = ["write_abinitio_report", "write_demo_report", "render_html"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def render_html(title: str, rows: dict, figures: list[tuple[str, str]], config: dict | None = None,
                notes: list[str] | None = None, links: list[tuple[str, str]] | None = None) -> str:
    """A minimal HTML page: a key/value table, notes (paragraphs), links (text, relative path),
    figures (caption, relative path; the caption is also the image's ``alt`` text), the config."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "td{padding:2px 10px;border-bottom:1px solid #ddd}img{max-width:100%}</style>",
        f"</head><body><h1>{html.escape(title)}</h1><table>",
    ]
    parts += [f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items()]
    parts.append("</table>")
    for note in notes or []:
        parts.append(f"<p>{html.escape(note)}</p>")
    for text, href in links or []:
        parts.append(f"<p><a href='{html.escape(href)}'>{html.escape(text)}</a></p>")
    for caption, src in figures:
        parts.append(f"<h2>{html.escape(caption)}</h2><img src='{html.escape(src)}' alt='{html.escape(caption)}'>")
    if config is not None:
        parts.append("<h2>configuration</h2><pre>" + html.escape(json.dumps(config, indent=2, default=str)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


@torch.no_grad()
def _pairs(trainer, dataset, inference, k: int = 8):
    """``k`` particles (spread over the data set) and the model's predictions at their poses."""
    idx = np.linspace(0, len(dataset) - 1, min(k, len(dataset))).round().astype(np.int64)
    batch = dataset.batch(idx)
    model = trainer.model
    vft = model.volume.prepare()
    t = torch.from_numpy(idx)
    shifts = inference.shifts_px[t] if inference.shifts_px is not None else batch.shifts_px
    pred = model.render(vft, inference.rotmats[t].float()[:, None], ctf=batch.ctf, shifts_px=shifts)
    proj = centered_ifft2(pred[:, 0] * dataset.box_size).real
    return batch.images, proj


def method_notes(config) -> list[str]:
    """Sentences saying which additions to CryoPoseNet (Nashed et al. 2021) a run used, and why."""
    tr, mo = config.training, config.model
    on = []
    if tr.search_fraction > 0:
        on.append(f"search warm-up for the first {100 * tr.search_fraction:.0f}% of the steps (a global "
                  f"{tr.search_step_deg:g}° grid search against the current map adds a candidate pose and teaches "
                  "the encoder; on β-gal at SNR 0.1 it improved the encoder's median error from 10.3° to 8.3°)")
    if tr.symmetric_loss:
        on.append("cryoAI's symmetrised loss (the better of the pose of the image and of its 180° turn)")
    if mo.n_hypotheses > 1:
        on.append(f"{mo.n_hypotheses} pose hypotheses per image, loss on the best")
    if tr.march_fraction > 0:
        on.append(f"frequency marching from {100 * tr.march_start:.0f}% of Nyquist")
    notes = ["CryoPoseNet (Nashed et al. 2021): a CNN encoder maps each image to its pose; a learned voxel map "
             "is sliced there, multiplied by the CTF and compared with the image; encoder and map are trained "
             "together from a random start. On in this run: " + ("; ".join(on) if on else "nothing added") + "."]
    if config.reconstruct and config.polish_rounds > 0:
        notes.append(f"After training, the encoder's poses (poses_encoder.star) were refined locally against the map "
                     f"at the particles' full box ({config.polish_rounds} round(s), "
                     f"{config.polish_start_step_deg:g}° to {config.polish_final_step_deg:g}°) and the map "
                     "reconstructed again (poses.star, map.mrc). New particles through `cryopose predict` get the "
                     "encoder's poses: one forward pass.")
    sym = getattr(config, "symmetry", mo.symmetry)
    if sym != mo.symmetry:
        notes.append(f"The training ran in {mo.symmetry}; then the encoder's map was centred, its {sym} symmetry axes "
                     f"found (summary.json: symmetry_axes, score 1 = symmetric), every pose turned into RELION's "
                     f"{sym} frame (encoder.pt records the turn, so `cryopose predict` gives poses in that frame "
                     f"too), and the polishing and map.mrc impose {sym}.")
    return notes


def write_abinitio_report(outdir: Path, *, trainer, dataset, inference, reconstruction, config, summary: dict) -> Path:
    """Draw the figures and write ``outdir/report.html``.

    Args:
        outdir: Run folder.
        trainer: The :class:`cryopose.training.trainer.Trainer` (history, model).
        dataset: The working-box :class:`cryopose.data.dataset.ParticleDataset`.
        inference: :class:`cryopose.training.trainer.PoseInference` of the particles.
        reconstruction: :class:`cryopose.reconstruction.ReconstructionResult` or ``None``.
        config: The run's :class:`cryopose.training.config.AbinitioConfig`.
        summary: Numbers for the table.

    Returns:
        Path of ``report.html``.
    """
    from ..io.atomic import atomic_write_text

    outdir = Path(outdir)
    figs: list[tuple[str, str]] = []
    h = trainer.history
    if h["epoch"]:
        plot_loss_curve(h["epoch"], h["loss"], h["radius"], outdir / "loss.png")
        figs.append(("loss curve", "loss.png"))
    if reconstruction is not None and reconstruction.fsc is not None:
        from ..metrics.fsc import plot_fsc

        plot_fsc({"half maps": (reconstruction.fsc_frequency_per_angstrom, reconstruction.fsc)},
                 outdir / "fsc.png", title="half-map FSC of map.mrc")
        figs.append(("half-map FSC", "fsc.png"))
    sym = getattr(config, "symmetry", config.model.symmetry)
    plot_angular_distribution(asymmetric_unit_mates(inference.rotmats, sym), outdir / "angles.png",
                              title=f"viewing directions in the {sym} asymmetric unit", symmetry=sym)
    cov = summary.get("view_coverage") or {}
    figs.append((f"angular distribution of the inferred poses in the asymmetric unit of {sym} "
                 f"({100 * cov.get('covered_fraction', float('nan')):.0f}% of the viewing directions covered, "
                 f"{100 * cov.get('expected_fraction', float('nan')):.0f}% for uniform views; sampling "
                 f"compensation factor {cov.get('scf', float('nan')):.2f}, 1 for uniform views)", "angles.png"))
    if getattr(dataset, "noise_spectrum", None) is not None:
        spec = dataset.noise_spectrum
        by_group = getattr(dataset, "noise_spectra_by_group", {})
        plot_noise_spectrum(spec.frequencies_per_angstrom(), spec.power, outdir / "noise.png",
                            groups={f"optics group {g}": s.power for g, s in by_group.items()})
        per_group = (f"; each of the {len(by_group)} optics groups drawn was whitened with its own spectrum"
                     if by_group else "")
        figs.append((f"noise power spectrum measured on the particles' background (low/high-frequency power "
                     f"{spec.colour_ratio():.2f}; 1 = white); images and projections were whitened with it"
                     f"{per_group}", "noise.png"))
    if reconstruction is not None:
        plot_central_slices(reconstruction.volume, outdir / "slices.png", title="map.mrc central slices")
    else:
        plot_central_slices(trainer.model.volume.density().detach(), outdir / "slices.png",
                            title="learned volume (working box) central slices")
    figs.append(("central slices", "slices.png"))
    images, proj = _pairs(trainer, dataset, inference)
    plot_image_pairs(images, proj, outdir / "projections.png")
    figs.append(("particles and the learned volume's projections at their inferred poses (CTF applied)",
                 "projections.png"))
    rows = dict(summary)
    path = outdir / "report.html"
    atomic_write_text(path, render_html("cryopose abinitio (CryoPoseNet)", rows, figs,
                                        dataclasses.asdict(config), notes=method_notes(config)))
    return path


def write_demo_report(outdir: Path, *, summary: dict, estimated_rotmats, true_rotmats, symmetry: str,
                      fsc_figure: str = "fsc_vs_truth.png", abinitio_report: str = "abinitio/report.html") -> Path:
    """Draw the viewing directions and write ``outdir/report.html`` of ``cryopose demo``.

    Args:
        outdir: Demo folder (holds ``fsc_figure`` and the ab initio run's report).
        summary: Numbers for the table (``demo_summary.json``).
        estimated_rotmats: ``(N, 3, 3)`` inferred poses aligned to the truth.
        true_rotmats: ``(N, 3, 3)`` true poses.
        symmetry: Point group of the scoring (the poses are shown in its asymmetric unit,
            outlined on the plot).
        fsc_figure: Relative path of the FSC-against-the-truth figure.
        abinitio_report: Relative path of the ab initio run's report (linked).

    Returns:
        Path of ``report.html``.

    Raises:
        SymmetryError: For an unknown symbol.
    """
    from ..io.atomic import atomic_write_text

    outdir = Path(outdir)
    figs = [("FSC of the maps from the aligned inferred poses and from the true poses against the true map",
             fsc_figure)]
    for name, rotmats, who, short in (("angles_estimated.png", estimated_rotmats,
                                       "inferred poses (aligned to the truth)", "inferred poses"),
                                      ("angles_truth.png", true_rotmats, "true poses", "true poses")):
        plot_angular_distribution(asymmetric_unit_mates(torch.as_tensor(rotmats).double(), symmetry), outdir / name,
                                  title=short, symmetry=symmetry)
        figs.append((f"viewing directions of the {who} in the asymmetric unit of {symmetry}, the symmetry the "
                     "pose error is measured in", name))
    rows = {k: v for k, v in summary.items() if not isinstance(v, (list, tuple))}
    notes = [f"Pose errors are measured after a global alignment of the inferred poses to the true ones, modulo "
             f"{symmetry} and the hand; the maps are reconstructed from the aligned inferred poses and from the "
             "true poses (the known-pose baseline) with the same half sets."]
    path = outdir / "report.html"
    atomic_write_text(path, render_html("cryopose demo (CryoPoseNet on simulated β-galactosidase)", rows, figs,
                                        notes=notes, links=[("the ab initio run's report", abinitio_report)]))
    return path
