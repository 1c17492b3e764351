"""``cryopose demo``: CryoPoseNet ab initio on simulated β-galactosidase particles, scored against
the truth and against known-pose ("tomo") reconstruction of the same particles.

Steps (all seeded):

1. the bundled map ``cryopose/data/betagal_64px_5.53A.mrc`` (a real β-gal reconstruction,
   Fourier-cropped to 64³ at 5.53 Å, D2; see ``data/SOURCE.md``) is projected at uniform random
   poses with CTFs drawn from the bundled EMPIAR-10028 table and white noise at SNR 0.1
   (:func:`cryopose.simulate.simulate_particles`, written as ``particles.mrcs`` + ``.star``);
2. :func:`cryopose.pipelines.abinitio.run_abinitio` trains CryoPoseNet on them from a random start
   (working box 32 px by default) and writes its outputs in ``OUTDIR/abinitio``;
3. the inferred poses are aligned to the truth modulo D2 (global rotation and hand,
   :func:`cryopose.metrics.pose_error.align_rotations`): median / mean pose error;
4. maps are reconstructed at 64 px from the aligned inferred poses and from the true poses
   (the known-pose baseline) with the same half-set split, and each is compared with the true
   map by FSC (0.5 and 0.143 thresholds).

Everything is printed as a small table and written to ``OUTDIR/demo_summary.json`` and
``OUTDIR/report.html`` (with the viewing directions in the D2 asymmetric unit, and a link to the
ab initio run's own report).
"""

from __future__ import annotations

import dataclasses
import math
import time
from importlib import resources
from pathlib import Path

import torch

from ..errors import UserError
from ..training.config import AbinitioConfig, ModelConfig, TrainingConfig

__all__ = ["DemoConfig", "DemoResult", "BETAGAL_MAP", "BETAGAL_PIXEL_SIZE", "CTF_TABLE", "SCORING_SYMMETRY",
           "bundled_path", "run_demo"]

BETAGAL_MAP = "betagal_64px_5.53A.mrc"
BETAGAL_PIXEL_SIZE = 3.54 * 100 / 64
CTF_TABLE = "empiar10028_ctf_20k.npy"


def bundled_path(name: str) -> Path:
    """Path of a file shipped in :mod:`cryopose.data`."""
    return Path(str(resources.files("cryopose.data").joinpath(name)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Size of the demo.

    Attributes:
        n_particles: Simulated particles (64 px).
        snr: Box-wide SNR of the simulation.
        epochs: Training epochs.
        box_size: Working box of the training (images Fourier-cropped from 64 px).
        symmetry: Point group imposed during training and reconstruction (the scoring is
            always modulo D2, the structure's symmetry).
        seed: Seed of the simulation and of the training.
        training: Other training settings (``epochs`` and ``seed`` are taken from here).
        model: Model settings (``symmetry`` is taken from here).
    """

    n_particles: int = 10000
    snr: float = 0.1
    epochs: int = 3
    box_size: int = 32
    symmetry: str = "C1"
    seed: int = 0
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)

    def __post_init__(self):
        if int(self.n_particles) < 16:
            raise UserError(f"--n-particles must be at least 16, got {self.n_particles}")
        if not (self.snr > 0 and math.isfinite(self.snr)):
            raise UserError(f"--snr must be positive, got {self.snr}")
        if not (16 <= int(self.box_size) <= 64):
            raise UserError(f"--box-size must be between 16 and 64, got {self.box_size}")

    def abinitio_config(self) -> AbinitioConfig:
        """The :class:`AbinitioConfig` of the training run."""
        return AbinitioConfig(
            box_size=self.box_size,
            model=dataclasses.replace(self.model, symmetry=self.symmetry),
            training=dataclasses.replace(self.training, epochs=self.epochs, seed=self.seed))


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Numbers of the demo (also in ``demo_summary.json``)."""

    summary: dict
    outdir: Path


def _fsc_vs_truth(volume, truth, apix: float) -> dict:
    from ..metrics.fsc import fsc_report

    rep = fsc_report(volume, truth, apix)
    return {"fsc0p5_angstrom": rep["resolution_fsc0p5_angstrom"],
            "fsc0p143_angstrom": rep["resolution_fsc0p143_angstrom"],
            "curve": [(c["frequency_per_angstrom"], c["fsc"]) for c in rep["fsc_curve"]]}


SCORING_SYMMETRY = "D2"  # β-galactosidase's point group: pose errors are measured modulo it


def _evaluate(outdir: Path, *, star_path: Path, result, truth, apix: float, config: DemoConfig,
              progress: bool) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Step 3 and 4 of the module docstring: align the inferred poses to the truth (modulo
    :data:`SCORING_SYMMETRY`), reconstruct from them and from the true poses, FSC against the
    true map (``map_aligned.mrc``, ``map_known_poses.mrc``, ``fsc_vs_truth.png``).

    Returns:
        ``(numbers, aligned inferred poses (N, 3, 3), true poses (N, 3, 3))``.
    """
    from ..io.mrc import write_map
    from ..io.particles import load_particles
    from ..metrics.fsc import plot_fsc
    from ..metrics.pose_error import align_rotations
    from ..reconstruction import reconstruct

    stack, meta = load_particles(star_path)
    align = align_rotations(result.rotmats.double(), meta.rotmats.double(), symmetry=SCORING_SYMMETRY,
                            seed=int(config.seed))
    align_enc = align_rotations(result.encoder_rotmats.double(), meta.rotmats.double(), symmetry=SCORING_SYMMETRY,
                                seed=int(config.seed))
    half_sets = torch.randperm(len(meta), generator=torch.Generator().manual_seed(int(config.seed))) % 2
    rec_est = reconstruct(stack, meta.replace(rotmats=align.aligned_est.float()), symmetry=config.symmetry,
                          half_sets=half_sets, progress=progress)
    rec_tomo = reconstruct(stack, meta, symmetry=config.symmetry, half_sets=half_sets, progress=progress)
    write_map(outdir / "map_aligned.mrc", rec_est.volume, apix)
    write_map(outdir / "map_known_poses.mrc", rec_tomo.volume, apix)
    fsc_est = _fsc_vs_truth(rec_est.volume, truth, apix)
    fsc_tomo = _fsc_vs_truth(rec_tomo.volume, truth, apix)
    plot_fsc({"CryoPoseNet poses vs truth": tuple(zip(*fsc_est["curve"])),
              "known poses vs truth": tuple(zip(*fsc_tomo["curve"]))}, outdir / "fsc_vs_truth.png",
             title="map vs true map")
    numbers = {
        "median_pose_error_deg": align.median_error_deg, "mean_pose_error_deg": align.mean_error_deg,
        "fraction_within_10deg": float((align.errors_deg < 10).double().mean()),
        "encoder_median_pose_error_deg": align_enc.median_error_deg,
        "encoder_mean_pose_error_deg": align_enc.mean_error_deg,
        "hand": align.hand,
        "abinitio_fsc0p5_angstrom": fsc_est["fsc0p5_angstrom"],
        "abinitio_fsc0p143_angstrom": fsc_est["fsc0p143_angstrom"],
        "known_pose_fsc0p5_angstrom": fsc_tomo["fsc0p5_angstrom"],
        "known_pose_fsc0p143_angstrom": fsc_tomo["fsc0p143_angstrom"],
    }
    return numbers, align.aligned_est, meta.rotmats.double()


def run_demo(outdir: str | Path, *, config: DemoConfig = DemoConfig(), progress: bool = True,
             log=print) -> DemoResult:
    """Run the demo (see the module docstring) and return its numbers.

    Args:
        outdir: Output folder (created; must not hold a previous demo's training run).
        config: :class:`DemoConfig`.
        progress: Progress bars.
        log: Function receiving one line of text per stage.

    Raises:
        UserError: Bad configuration or an ``outdir`` already holding a run.
    """
    from ..io.atomic import atomic_write_json
    from ..io.mrc import read_map
    from ..report.html import write_demo_report
    from ..simulate.simulator import SimulationConfig, simulate_particles
    from .abinitio import run_abinitio

    t_all = time.perf_counter()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if (outdir / "abinitio" / "checkpoint.pt").exists():
        raise UserError(f"{outdir} already holds a demo run; choose another -o")
    truth = torch.from_numpy(read_map(bundled_path(BETAGAL_MAP), pixel_size_angstrom=BETAGAL_PIXEL_SIZE).volume.copy())
    apix = BETAGAL_PIXEL_SIZE
    seconds = {}

    t = time.perf_counter()
    sim_cfg = SimulationConfig(snr=config.snr, ctf_table_path=str(bundled_path(CTF_TABLE)), progress=progress)
    sim = simulate_particles(truth, pixel_size_angstrom=apix, n_particles=int(config.n_particles), config=sim_cfg,
                             generator=int(config.seed), output=outdir / "particles")
    seconds["simulate"] = time.perf_counter() - t
    log(f"simulated {sim.n_particles} particles of 64 px at SNR {config.snr:g} with EMPIAR-10028 CTFs "
        f"({seconds['simulate']:.0f} s)")

    t = time.perf_counter()
    result = run_abinitio(sim.star_path, outdir / "abinitio", config=config.abinitio_config(), progress=progress)
    seconds["abinitio"] = time.perf_counter() - t
    log(f"abinitio: {seconds['abinitio']:.0f} s (train {result.seconds.get('train', 0):.0f} s)")

    t = time.perf_counter()
    numbers, aligned, true_rotmats = _evaluate(outdir, star_path=sim.star_path, result=result, truth=truth,
                                               apix=apix, config=config, progress=progress)
    seconds["evaluate"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_all
    summary = {
        "n_particles": int(config.n_particles), "snr": config.snr, "box_size": 64,
        "working_box_size": config.box_size, "epochs": config.epochs, "seed": config.seed,
        "pixel_size_angstrom": apix, **numbers,
        "abinitio_half_map_fsc0p143_angstrom": result.resolution_fsc0p143_angstrom,
        "median_confidence": float(result.confidence.median()),
        "seconds": seconds,
    }
    atomic_write_json(outdir / "demo_summary.json", summary, default=str)
    write_demo_report(outdir, summary=summary, estimated_rotmats=aligned, true_rotmats=true_rotmats,
                      symmetry=SCORING_SYMMETRY)
    return DemoResult(summary=summary, outdir=outdir)
