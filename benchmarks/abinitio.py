"""Benchmark: CryoPoseNet ab initio (``cryopose abinitio``) on simulated data, scored against the
truth and against known-pose ("tomo") reconstruction of the same particles.

Layout follows Table 1 of Nashed et al. (ICCV-W 2021): 64-px particles, adenylate kinase 4AKE
(asymmetric, from ``shared/data/pdb/4ake_mdanalysis.pdb``) noise-free and at 0, −10 dB with CTF,
and β-galactosidase (D2, the bundled 64-px map) with CTF. CTFs are drawn from the real
EMPIAR-10028 table (bundled subsample). For every case:

* median / mean pose error (degrees) after global alignment (rotation + hand, modulo the
  structure's point group; :func:`cryopose.metrics.pose_error.align_rotations`);
* FSC = 0.5 / 0.143 resolution against the true map of the map reconstructed from the aligned
  inferred poses, and of the map reconstructed from the true poses (the tomo baseline), with
  the same half-set split;
* wall time of the training and inference.

Sections (``--sections``):

``table1``   the cases above (``--n-particles``, ``--epochs``, ``--box-size``);
``ablation`` β-gal at SNR 0.1 with CTF: defaults vs without local polishing, without the search
             warm-up (the paper's pure gradient descent), without the symmetrised loss, with one
             hypothesis, without frequency marching (one seed each);
``seeds``    −10 dB with CTF, seeds 0, 1, 2 (``--seeds-structure``, 4AKE by default; ``--seeds``).

``--set KEY=VALUE`` overrides a field of :class:`~cryopose.training.config.TrainingConfig` or
:class:`~cryopose.training.config.ModelConfig` in every row (recorded in the row's JSON).

Both the final poses (after local polishing at the full box) and the encoder's own poses
(amortized inference, one forward pass) are scored.

Usage::

    python benchmarks/abinitio.py [--sections table1,ablation,seeds] [--n-particles 10000]
                                  [--epochs 3] [--box-size 32] [--out DIR] [--quick]

``--quick`` (2,000 particles, 4 epochs) checks that the script runs; its numbers are not the
benchmark's. Results are printed as Markdown tables and written to ``OUT/abinitio_benchmark.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
PDB_4AKE = DATA / "pdb" / "4ake_mdanalysis.pdb"
BOX = 64


def _truth(structure: str):
    """``(volume (64³) torch, pixel size Å, symmetry)`` of a benchmark structure."""
    from cryopose.io.mrc import read_map
    from cryopose.pipelines.demo import BETAGAL_MAP, BETAGAL_PIXEL_SIZE, bundled_path
    from cryopose.simulate.volumes import load_volume

    if structure == "betagal":
        v = read_map(bundled_path(BETAGAL_MAP), pixel_size_angstrom=BETAGAL_PIXEL_SIZE).volume
        return torch.from_numpy(v.copy()), BETAGAL_PIXEL_SIZE, "D2"
    m = load_volume(PDB_4AKE, box_size=BOX)
    return torch.from_numpy(np.asarray(m.volume).copy()), float(m.pixel_size_angstrom), "C1"


def ncs_rotation_4ake() -> torch.Tensor:
    """The non-crystallographic 2-fold of the 4AKE model: ``(3, 3)`` rotation taking chain B onto A.

    The 4AKE entry holds two copies of adenylate kinase (chains A and B), related by a near-2-fold
    rotation through the dimer's centre of mass — which :func:`cryopose.simulate.volumes.load_volume`
    puts at the box centre with the model's axes. Poses differing by it project to nearly the same
    images, so ab initio assigns particles to either copy's frame without harming the map; the
    table reports the error modulo this rotation next to the plain C1 error. Kabsch fit on the
    Cα atoms of the residues present in both chains (gemmi).
    """
    import gemmi

    st = gemmi.read_structure(str(PDB_4AKE))
    ca = {}
    for ch in st[0]:
        ca[ch.name] = {r.seqid.num: np.array(r["CA"][0].pos.tolist()) for r in ch if r.find_atom("CA", "*")}
    common = sorted(set(ca["A"]) & set(ca["B"]))
    a = np.stack([ca["A"][k] for k in common])
    b = np.stack([ca["B"][k] for k in common])
    a0, b0 = a - a.mean(0), b - b.mean(0)
    u, _, vt = np.linalg.svd(b0.T @ a0)
    d = np.sign(np.linalg.det(u @ vt))
    rot = (u @ np.diag([1.0, 1.0, d]) @ vt).T  # a ≈ rot @ b
    return torch.from_numpy(rot)


def _errors_modulo(aligned: torch.Tensor, truth: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
    """``min(d(A_i, T_i), d(A_i, T_i G))`` in degrees for one extra operator ``G``."""
    from cryopose.rotations import geodesic_distance_deg

    return torch.minimum(geodesic_distance_deg(aligned, truth), geodesic_distance_deg(aligned, truth @ op))


def simulate_case(structure: str, snr_db: float | None, out: Path, *, n_particles: int, ctf: bool = True,
                  seed: int = 0) -> tuple[Path, torch.Tensor, float, str]:
    """Simulate a benchmark case into ``out/particles``: 64-px particles of ``structure``, uniform
    SO(3), CTFs drawn from the bundled EMPIAR-10028 table when ``ctf``, white noise at ``snr_db``
    (``None``: noise-free); the same seed gives the same set. Returns ``(STAR path, true volume,
    pixel size Å, point group)``."""
    from cryopose.pipelines.demo import CTF_TABLE, bundled_path
    from cryopose.simulate.noise import snr_from_db
    from cryopose.simulate.simulator import SimulationConfig, simulate_particles

    truth, apix, sym = _truth(structure)
    snr = None if snr_db is None else snr_from_db(snr_db)
    sim = simulate_particles(truth, pixel_size_angstrom=apix, n_particles=n_particles,
                             config=SimulationConfig(snr=snr, apply_ctf=ctf,
                                                     ctf_table_path=str(bundled_path(CTF_TABLE)) if ctf else None),
                             generator=seed, output=out / "particles")
    return sim.star_path, truth, apix, sym


def run_case(name: str, structure: str, snr_db: float | None, workdir: Path, *, n_particles: int, epochs: int,
             box_size: int, seed: int = 0, training: dict | None = None, model: dict | None = None,
             ctf: bool = True, polish_rounds: int = 1, threads: int | None = None) -> dict:
    """Simulate, train, evaluate one case; returns its row."""
    from cryopose.io.particles import load_particles
    from cryopose.pipelines.abinitio import run_abinitio
    from cryopose.runtime import Runtime
    from cryopose.training.config import AbinitioConfig, ModelConfig, TrainingConfig

    case_dir = workdir / f"{name}_seed{seed}"
    case_dir.mkdir(parents=True, exist_ok=True)
    star, truth, apix, sym = simulate_case(structure, snr_db, case_dir, n_particles=n_particles, ctf=ctf, seed=seed)
    cfg = AbinitioConfig(box_size=box_size, reconstruct=polish_rounds > 0, polish_rounds=polish_rounds,
                         model=ModelConfig(**(model or {})),  # ab initio in C1, scored modulo ``sym``
                         training=TrainingConfig(epochs=epochs, seed=seed, **(training or {})))
    t0 = time.perf_counter()
    res = run_abinitio(star, case_dir / "run", config=cfg, progress=False, report=False,
                       runtime=Runtime(threads=threads, seed=seed))
    wall = time.perf_counter() - t0
    stack, meta = load_particles(star)
    sc = score_poses(res.rotmats, stack, meta, truth, apix, sym, structure=structure, seed=seed)
    enc = score_poses(res.encoder_rotmats, stack, meta, truth, apix, sym, structure=structure, seed=seed,
                      reconstruct_map=False)
    encoder = {k.replace("median", "encoder_median").replace("mean", "encoder_mean"): v for k, v in enc.items()
               if k.endswith("_error_deg")}
    return {
        "case": name, "structure": structure, "symmetry": sym, "snr_db": snr_db, "seed": seed,
        "n_particles": n_particles, "epochs": epochs, "working_box": box_size, "ctf": ctf,
        "polish_rounds": polish_rounds, **sc, **encoder,
        "train_s": res.seconds.get("train"), "polish_s": res.seconds.get("polish", 0.0), "wall_s": wall,
        "training": training or {}, "model": model or {},
    }


def score_poses(rotmats: torch.Tensor, stack, meta, truth: torch.Tensor, apix: float, sym: str, *,
                structure: str = "", seed: int = 0, reconstruct_map: bool = True, tomo: bool = True,
                shifts_angstrom: torch.Tensor | None = None) -> dict:
    """Score estimated rotations ``(N, 3, 3)`` (RELION convention) of particles ``stack``/``meta``.

    Median / mean geodesic error (degrees) after global alignment (rotation and hand, modulo
    ``sym``; :func:`cryopose.metrics.pose_error.align_rotations`); for 4AKE also modulo its A/B
    non-crystallographic 2-fold (:func:`ncs_rotation_4ake`). With ``reconstruct_map``, the FSC =
    0.5 / 0.143 resolution (Å) against ``truth`` of the map reconstructed from the aligned rotations
    (``shifts_angstrom`` ``(N, 2)`` replace the particles' origins when given) and, with ``tomo``,
    of the map from the true poses, on the same seeded half-set split.
    """
    from cryopose.metrics.fsc import fsc_report
    from cryopose.metrics.pose_error import align_rotations
    from cryopose.reconstruction import reconstruct

    align = align_rotations(rotmats.double(), meta.rotmats.double(), symmetry=sym, seed=seed)
    out = {"median_error_deg": align.median_error_deg, "mean_error_deg": align.mean_error_deg, "hand": align.hand}
    if structure == "4ake":
        g = ncs_rotation_4ake()
        e_ncs = _errors_modulo(align.aligned_est.double(), meta.rotmats.double(), g)
        out.update(ncs_angle_deg=float(torch.rad2deg(torch.arccos(((torch.trace(g) - 1) / 2).clamp(-1, 1)))),
                   ncs_median_error_deg=float(e_ncs.median()), ncs_mean_error_deg=float(e_ncs.mean()))
    if reconstruct_map:
        halves = torch.randperm(len(meta), generator=torch.Generator().manual_seed(seed)) % 2
        est_meta = meta.replace(rotmats=align.aligned_est.float())
        if shifts_angstrom is not None:
            est_meta = est_meta.replace(shifts_angstrom=torch.as_tensor(shifts_angstrom, dtype=torch.float32))
        f_est = fsc_report(reconstruct(stack, est_meta, symmetry=sym, half_sets=halves, progress=False).volume,
                           truth, apix)
        out.update(fsc0p5_A=f_est["resolution_fsc0p5_angstrom"], fsc0p143_A=f_est["resolution_fsc0p143_angstrom"])
        if tomo:
            f_tomo = fsc_report(reconstruct(stack, meta, symmetry=sym, half_sets=halves, progress=False).volume,
                                truth, apix)
            out.update(tomo_fsc0p5_A=f_tomo["resolution_fsc0p5_angstrom"],
                       tomo_fsc0p143_A=f_tomo["resolution_fsc0p143_angstrom"])
    return out


def _table(rows: list[dict], title: str) -> str:
    head = ("| case | seed | median / mean err (°) | encoder alone (°) | FSC0.5 / 0.143 (Å) | tomo FSC0.5 / 0.143 (Å) | "
            "train + polish = wall (s) |")
    lines = [f"\n### {title}\n", head, "|" + "---|" * 7]
    for r in rows:
        if "ncs_median_error_deg" in r:
            lines.append(f"| {r['case']} (modulo the {r['ncs_angle_deg']:.0f}° NCS of chains A/B) | {r['seed']} | "
                         f"{r['ncs_median_error_deg']:.2f} / {r['ncs_mean_error_deg']:.2f} | "
                         f"{r['ncs_encoder_median_error_deg']:.2f} / {r['ncs_encoder_mean_error_deg']:.2f} | | | |")
        lines.append(f"| {r['case']} | {r['seed']} | {r['median_error_deg']:.2f} / {r['mean_error_deg']:.2f} | "
                     f"{r['encoder_median_error_deg']:.2f} / {r['encoder_mean_error_deg']:.2f} | "
                     f"{r['fsc0p5_A']:.1f} / {r['fsc0p143_A']:.1f} | {r['tomo_fsc0p5_A']:.1f} / "
                     f"{r['tomo_fsc0p143_A']:.1f} | {r['train_s']:.0f} + {r['polish_s']:.0f} = {r['wall_s']:.0f} |")
    return "\n".join(lines)


#: (name, structure, SNR in dB or None for noise-free, CTF) — the rows of Nashed et al.'s Table 1
TABLE1 = [("4AKE noise-free", "4ake", None, False), ("4AKE 10 dB", "4ake", 10.0, False),
          ("4AKE 0 dB", "4ake", 0.0, False), ("4AKE -10 dB", "4ake", -10.0, False),
          ("4AKE 0 dB, CTF", "4ake", 0.0, True), ("4AKE -10 dB, CTF", "4ake", -10.0, True),
          ("beta-gal 0 dB, CTF (D2)", "betagal", 0.0, True), ("beta-gal -10 dB, CTF (D2)", "betagal", -10.0, True)]
#: (name, training overrides, model overrides, polish rounds) on beta-gal at -10 dB with CTF
ABLATION = [("defaults", {}, {}, 1), ("no polishing", {}, {}, 0),
            ("no search warm-up (the paper's gradient descent)", {"search_fraction": 0.0}, {}, 1),
            ("no symmetric loss", {"symmetric_loss": False}, {}, 1),
            ("1 hypothesis", {}, {"n_hypotheses": 1}, 1), ("no frequency marching", {"march_fraction": 0.0}, {}, 1)]


def _parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["march_start=0.25", "n_hypotheses=8"]`` → ``{"training": {...}, "model": {...}}``, each value
    converted to the type of the field's default. Raises ValueError naming an unknown field or a bad value."""
    from cryopose.training.config import ModelConfig, TrainingConfig

    out: dict[str, dict] = {"training": {}, "model": {}}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        own_flag = {"epochs": "--epochs", "seed": "--seeds"}
        if key in own_flag:
            raise ValueError(f"--set {key}: use {own_flag[key]} instead")
        for group, cls in (("training", TrainingConfig), ("model", ModelConfig)):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if key in fields:
                default = fields[key].default
                try:
                    if isinstance(default, bool):
                        if value.lower() not in ("true", "false", "1", "0"):
                            raise ValueError(value)
                        v = value.lower() in ("true", "1")
                    elif default is None:
                        v = float(value)
                    else:
                        v = type(default)(value)
                except ValueError:
                    raise ValueError(f"--set {key}: cannot read {value!r} as {type(default).__name__}") from None
                out[group][key] = v
                break
        else:
            raise ValueError(f"--set {key}: not a field of TrainingConfig or ModelConfig")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="table1,ablation,seeds")
    p.add_argument("--n-particles", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--box-size", type=int, default=32)
    p.add_argument("--out", default="benchmark_abinitio")
    p.add_argument("--rows", default="", help="semicolon-separated table1 row names to run (default all)")
    p.add_argument("--ablation-rows", default="", help="semicolon-separated ablation row names (default all)")
    p.add_argument("--seeds-structure", default="4ake", choices=("4ake", "betagal"))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the seeds section (default 0,1,2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the training (default: the idle cores; give 1 when running two at once)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainingConfig or ModelConfig field for every row (repeatable), "
                        "e.g. --set march_start=0.25 --set n_hypotheses=8; the row's JSON records it")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    try:
        overrides = _parse_overrides(a.set)
    except ValueError as e:
        p.error(str(e))
    if a.quick:
        a.n_particles, a.epochs = 2000, 4
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(n_particles=a.n_particles, epochs=a.epochs, box_size=a.box_size, threads=a.threads,
              training=overrides["training"] or None, model=overrides["model"] or None)
    results: dict[str, list] = {}
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    for sec in sections:
        rows = []
        if sec == "table1":
            for name, structure, db, ctf in TABLE1:
                if a.rows and not any(r.strip().lower() == name.lower() for r in a.rows.split(";")):
                    continue
                rows.append(run_case(name, structure, db, out, ctf=ctf, **kw))
                print(_table(rows[-1:], name), flush=True)
        elif sec == "ablation":
            for name, tr, mo, polish in ABLATION:
                if a.ablation_rows and not any(r.strip().lower() == name.lower() for r in a.ablation_rows.split(";")):
                    continue
                rows.append(run_case("betagal " + name, "betagal", -10.0, out, polish_rounds=polish,
                                     **{**kw, "training": {**overrides["training"], **tr},
                                        "model": {**overrides["model"], **mo}}))
                print(_table(rows[-1:], name), flush=True)
        elif sec == "seeds":
            structure = a.seeds_structure
            label = "4AKE -10 dB, CTF" if structure == "4ake" else "beta-gal -10 dB, CTF (D2)"
            for seed in (int(x) for x in a.seeds.split(",") if x.strip()):
                rows.append(run_case(label, structure, -10.0, out, seed=seed, **kw))
                print(_table(rows[-1:], f"seed {seed}"), flush=True)
        else:
            print(f"unknown section {sec!r}", file=sys.stderr)
            return 2
        results[sec] = rows
        print(_table(rows, sec), flush=True)
        (out / "abinitio_benchmark.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
