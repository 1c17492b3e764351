"""``cryopose heterogeneity analyze``: classes, particle subsets and maps from a training run.

:func:`analyze_heterogeneity` reads only the files both training variants write
(``latents.npy``, ``heterogeneity.json``; :mod:`cryopose.pipelines.heterogeneity`) and the
particles, then

1. embeds the latents with UMAP and clusters them with HDBSCAN, the minimum class size a
   fraction of the particles (:mod:`cryopose.analysis.clustering`): the class count is found;
2. writes, per class ``k`` (1-based, largest first), ``class_00k.star``: the RELION 3.1 rows of
   the original particles (every column kept) with ``rlnClassNumber = k``; HDBSCAN's noise set
   as ``noise.star`` (junk candidates, ``rlnClassNumber = 0``); and ``particles_classes.star``
   with all particles;
3. with poses in the STAR, reconstructs the consensus map (all particles) and one map per class
   from its particles at their poses (:func:`cryopose.reconstruction.reconstruct`: half maps,
   FSC, Wiener filter): ``consensus.mrc``, ``class_00k.mrc`` and their ``_half1/_half2``;
4. with truth columns (``rlnCryoposeTrueClass`` from ``cryopose simulate`` mixtures): NMI, ARI
   and AMI; with ``rlnCryoposeTrueMorph``: ``|Spearman ρ|`` of the latents' first principal
   component with ``t``; with ``true_maps`` (one per true class, in order): per class the
   FSC = 0.5 resolution against the true map of its majority class, beside that of the
   particles that truly belong to it (the ideal classification, same poses);
5. writes ``summary.json`` and ``report.html`` (:mod:`cryopose.report.heterogeneity`).

Everything goes to ``OUTDIR/analysis`` (another folder with ``analysis_dir``). One class found,
a class too small to reconstruct, or everything in the noise set are reported as warnings
(the consensus outputs are still written); true maps on another grid are refused.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

__all__ = ["AnalysisResult", "analyze_heterogeneity", "MIN_CLASS_PARTICLES"]

#: Fewest particles a class needs for its half maps.
MIN_CLASS_PARTICLES = 10


@dataclasses.dataclass(frozen=True)
class AnalysisResult:
    """What :func:`analyze_heterogeneity` found and wrote.

    Attributes:
        folder: The analysis folder.
        n_classes: Classes found.
        labels: ``(N,)`` class per particle (0-based; −1 = noise).
        summary: The ``summary.json`` contents.
    """

    folder: Path
    n_classes: int
    labels: np.ndarray
    summary: dict


def _write_subsets(adir: Path, meta, labels: np.ndarray, n_classes: int, relative_to) -> list[str]:
    from ..io.star import write_star

    numbers = np.where(labels >= 0, labels + 1, 0).astype(np.int64)
    written = []
    write_star(adir / "particles_classes.star", meta, extra_columns={"rlnClassNumber": numbers},
               relative_to=relative_to)
    for k in range(-1, n_classes):
        rows = np.flatnonzero(labels == k)
        if rows.size == 0:
            continue
        name = "noise.star" if k < 0 else f"class_{k + 1:03d}.star"
        write_star(adir / name, meta.subset(rows), extra_columns={"rlnClassNumber": numbers[rows]},
                   relative_to=relative_to)
        written.append(name)
    return written


def _reconstruct(stack, meta, rows: np.ndarray, adir: Path, name: str, seed: int, progress: bool) -> dict:
    from ..io.mrc import write_map
    from ..reconstruction import reconstruct

    g = torch.Generator().manual_seed(seed)
    rec = reconstruct(stack.subset(rows), meta.subset(rows), generator=g, progress=progress)
    apix = float(meta.pixel_size_angstrom)
    write_map(adir / f"{name}.mrc", rec.volume, apix)
    write_map(adir / f"{name}_half1.mrc", rec.half_maps[0], apix)
    write_map(adir / f"{name}_half2.mrc", rec.half_maps[1], apix)
    return {"volume": rec.volume, "freq": rec.fsc_frequency_per_angstrom.numpy(), "fsc": rec.fsc.numpy(),
            "resolution_fsc0p143_angstrom": rec.resolution_fsc0p143_angstrom,
            "resolution_fsc0p5_angstrom": rec.resolution_fsc0p5_angstrom, "n_particles": int(rows.size)}


def _load_true_maps(paths, box: int, apix: float, header_pixel: float | None) -> list[torch.Tensor]:
    from ..io.mrc import read_map

    maps = []
    for p in paths:
        m = read_map(p, pixel_size_angstrom=header_pixel, require_cubic=True)
        if m.volume.shape[-1] != box or abs(m.pixel_size_angstrom - apix) > 1e-3 * apix:
            raise UserError(f"true map {p} is {m.volume.shape[-1]} px at {m.pixel_size_angstrom:g} Å, the particles "
                            f"{box} px at {apix:g} Å: give the maps on the particles' grid")
        maps.append(torch.from_numpy(np.array(m.volume, dtype=np.float32)))
    return maps


def _truth(meta, latents, labels) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    from ..analysis.clustering import label_scores, principal_component_spearman
    from ..simulate.mixture import TRUE_CLASS_COLUMN, TRUE_MORPH_COLUMN

    out, tc, tm = {}, None, None
    if TRUE_CLASS_COLUMN in meta.table:
        tc = meta.table[TRUE_CLASS_COLUMN].to_numpy().astype(np.int64)
        out["scores"] = label_scores(tc, labels)
        real = tc > 0
        if not real.all():
            out["scores_without_junk"] = label_scores(tc[real], labels[real])
            out["junk_in_noise_set_fraction"] = float((labels[~real] < 0).mean())
        out["n_true_classes"] = int(np.unique(tc[real]).size)
    if TRUE_MORPH_COLUMN in meta.table:
        tm = meta.table[TRUE_MORPH_COLUMN].to_numpy().astype(np.float64)
        out["morph_pc1_abs_spearman"] = principal_component_spearman(latents, tm)
    return out, tc, tm


def _true_map_fsc(classes: dict, true_maps, tc, labels, stack, meta, adir, seed) -> list[dict]:
    from ..metrics.fsc import fsc_report

    apix = float(meta.pixel_size_angstrom)
    rows_out = []
    for k, rec in classes.items():
        members = tc[labels == k]
        members = members[members > 0]
        if members.size == 0:
            continue
        t = int(np.bincount(members).argmax())
        if t > len(true_maps):
            raise UserError(f"true class {t} has no map: {len(true_maps)} --true-map file(s) given")
        est = fsc_report(rec["volume"], true_maps[t - 1], apix)["resolution_fsc0p5_angstrom"]
        ideal_rows = np.flatnonzero(tc == t)
        ideal = _reconstruct(stack, meta, ideal_rows, adir, f"ideal_true_class_{t}", seed, False)
        ref = fsc_report(ideal["volume"], true_maps[t - 1], apix)["resolution_fsc0p5_angstrom"]
        rows_out.append({"class": k + 1, "true_class": t, "fsc0p5_vs_true_angstrom": est,
                         "ideal_fsc0p5_vs_true_angstrom": ref, "ratio": est / ref if ref else None})
    return rows_out


def _class_maps(stack, meta, cl, adir: Path, seed: int, progress: bool, warnings: list):
    """Consensus and class reconstructions: ``(maps, FSC curves, class records, resolutions)``."""
    maps, curves, classes, res = {}, {}, {}, {}
    cons = _reconstruct(stack, meta, np.arange(len(meta)), adir, "consensus", seed, progress)
    maps["consensus"], curves["consensus"] = cons["volume"], (cons["freq"], cons["fsc"])
    res["consensus"] = cons["resolution_fsc0p143_angstrom"]
    for k in range(cl.n_classes):
        rows = np.flatnonzero(cl.labels == k)
        name = f"class_{k + 1:03d}"
        if rows.size < MIN_CLASS_PARTICLES:
            warnings.append(f"class {k + 1} has {rows.size} particles: too few for half maps; not reconstructed")
            continue
        classes[k] = _reconstruct(stack, meta, rows, adir, name, seed, progress)
        maps[name], curves[name] = classes[k]["volume"], (classes[k]["freq"], classes[k]["fsc"])
        res[name] = classes[k]["resolution_fsc0p143_angstrom"]
    return maps, curves, classes, res


def analyze_heterogeneity(outdir: str | Path, *, min_class_fraction: float = 0.05, particles: str | Path | None = None,
                          datadir: str | Path | None = None, true_maps=None,
                          true_map_pixel_size_angstrom: float | None = None, seed: int = 0, reconstruct: bool = True,
                          report: bool = True, force: bool = False, progress: bool = False,
                          analysis_dir: str | Path | None = None) -> AnalysisResult:
    """Classes, subsets, maps and scores of a heterogeneity run (module docstring).

    Args:
        outdir: The training run's folder.
        min_class_fraction: HDBSCAN's minimum class size as a fraction of the particles.
        particles: The particles (default: the path recorded in ``heterogeneity.json``).
        datadir: Another folder the stacks may be read from.
        true_maps: Maps of the true classes, in the order of ``rlnCryoposeTrueClass``.
        true_map_pixel_size_angstrom: Their voxel size, overriding the headers.
        seed: Seeds UMAP and the half-set splits.
        reconstruct: Reconstruct the consensus and class maps (needs poses).
        report: Write ``report.html``.
        force: Replace an earlier analysis in the same folder.
        progress: Progress bars of the reconstructions.
        analysis_dir: Output folder (default ``OUTDIR/analysis``).

    Returns:
        :class:`AnalysisResult`.

    Raises:
        UserError: Missing run files, particles that do not match the latents, an existing
            analysis without ``force``, true maps on another grid.
    """
    from ..analysis.clustering import cluster_latents
    from ..io.atomic import atomic_write_json
    from ..io.particles import load_particles
    from .heterogeneity import read_run

    t0 = time.perf_counter()
    outdir = Path(outdir)
    info, latents = read_run(outdir)
    particles = Path(particles if particles is not None else info["particles"])
    adir = Path(analysis_dir) if analysis_dir is not None else outdir / "analysis"
    if (adir / "summary.json").exists() and not force:
        raise UserError(f"{adir} already holds an analysis; pass --force to replace it")
    stack, meta = load_particles(particles, datadir=datadir)
    if len(meta) != latents.shape[0]:
        raise UserError(f"{particles} has {len(meta)} particles but {outdir}/latents.npy {latents.shape[0]}: "
                        "not the particles this run was trained on")
    tmaps = None
    if true_maps:
        tmaps = _load_true_maps(true_maps, stack.box_size, float(meta.pixel_size_angstrom),
                                true_map_pixel_size_angstrom)
    adir.mkdir(parents=True, exist_ok=True)
    cl = cluster_latents(latents, min_class_fraction=min_class_fraction, seed=seed)
    warnings = list(cl.warnings)
    np.save(adir / "umap.npy", cl.embedding)
    subsets = _write_subsets(adir, meta, cl.labels, cl.n_classes, relative_to=None)
    truth, tc, tm = _truth(meta, latents, cl.labels)
    maps, curves, classes, res = {}, {}, {}, {}
    if reconstruct and meta.rotmats is None:
        warnings.append(f"{particles} has no poses: no maps reconstructed (align the particles to the consensus map "
                        "with `cryopose search`, then analyse again with --particles)")
    elif reconstruct:
        maps, curves, classes, res = _class_maps(stack, meta, cl, adir, seed, progress, warnings)
        if tmaps is not None and tc is not None:
            truth["fsc_vs_true_maps"] = _true_map_fsc(classes, tmaps, tc, cl.labels, stack, meta, adir, seed)
    summary = {"variant": info["variant"], "zdim": int(info["zdim"]), "n_particles": int(len(meta)),
               "particles": str(particles), "min_class_fraction": min_class_fraction,
               "min_cluster_size": cl.min_cluster_size, "n_classes": cl.n_classes,
               "class_sizes": cl.sizes.tolist(), "n_noise": cl.n_noise, "star_files": subsets,
               "resolution_fsc0p143_angstrom": res, **truth, "warnings": warnings,
               "seconds": time.perf_counter() - t0}
    if report:
        from ..report.heterogeneity import write_heterogeneity_report

        write_heterogeneity_report(adir, clustering=cl, summary=summary, class_maps=maps, fsc_curves=curves,
                                   truth_class=tc, truth_morph=tm, config={"training": info.get("model")})
    atomic_write_json(adir / "summary.json", summary)
    return AnalysisResult(folder=adir, n_classes=cl.n_classes, labels=cl.labels, summary=summary)
