"""Simulated particle data sets with ground truth: ``cryopose simulate``.

Each particle image is made as ``relion_project --ctf --add_noise --white_noise σ`` makes it:

``image = c · ( F⁻¹[ CTF(k) · V̂(Rᵀ (k, 0)) · exp(+2πi k·s / n) ] + σ z )``

— a Fourier-slice projection of the volume at the ground-truth rotation ``R`` (the equation
of :func:`cryopose.projection.project`, RELION's interpolation and gridding correction,
evaluated by the faster forward-only :class:`cryopose.simulate.render.SliceRenderer`, equal to
``project()`` to float32 rounding), shifted
to the RELION origin ``s`` (content at ``−s``), multiplied by the CTF
(:func:`cryopose.ctf.compute_ctf`), plus white Gaussian noise of one ``σ`` for the whole data
set (:mod:`cryopose.simulate.noise` defines the SNR), times ``c = −1`` with
``invert_contrast`` (dark particles) else ``+1``. Junk particles are described in
:mod:`cryopose.simulate.junk`.

Ground truth (drawn up front, in this order, from the one ``torch.Generator``): rotations
(uniform on SO(3), or in-plane rotations of one view), shifts (uniform in a disc), CTF
parameters (range, list of values or a CTF table), junk labels, off-centre shifts of the
``offcentre`` junk. Then, chunk by chunk: blob shapes and noise. The output is therefore
deterministic given the seed and the configuration (chunk size included).

The noise ``σ`` is calibrated on the first chunk (``chunk_size`` particles, 1,000 by
default): ``σ² = mean var(S_i) / SNR`` over its true particles. For data sets no larger than
one chunk this is exactly the definition; for larger ones it is an estimate from the first
chunk (the images are not all held in memory), and the SNR achieved over the whole data set
is computed at the end, reported in :class:`SimulationResult` and recoverable from the
``rlnCryoposeSignalVariance`` and ``rlnCryoposeNoiseSigma`` columns.

Outputs (:func:`simulate_particles`): ``OUT.mrcs`` written chunk by chunk
(:class:`cryopose.io.mrc.StackWriter`, so 10^5+ images never sit in memory) and a RELION 3.1
``OUT.star`` (:func:`cryopose.io.star.write_star`) with the ground-truth poses
(``rlnAngleRot/Tilt/Psi``), shifts (``rlnOriginXAngst/YAngst``) and CTF, plus the columns
``rlnCryoposeIsOutlier`` (0/1), ``rlnCryoposeJunkType`` (``none``, ``noise``, ``blob``,
``other``, ``offcentre``), ``rlnCryoposeSignalVariance`` (variance of the noise-free image),
``rlnCryoposeNoiseSigma`` (σ), ``rlnCryoposeSNR`` (the requested SNR, 0 without noise) and
``rlnCryoposeInvertedContrast`` (0/1). Without CTF (``apply_ctf=False``) no CTF columns are
written.

Heterogeneous data sets (:mod:`cryopose.simulate.mixture`): pass a list of volumes and
``class_fractions`` (a discrete mixture) or ``morph=True`` (two volumes, ``t ~ U(0, 1)``). Their
draws (the class permutation or the morph parameters) come after all the others, so a
one-volume data set is unchanged; the STAR gains ``rlnCryoposeTrueClass`` /
``rlnCryoposeTrueMorph``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..ctf import CTFParams
from ..errors import UserError
from ..io.mrc import StackWriter
from ..io.particles import ParticleMetadata
from ..projection import prepare_volume_ft
from .chunk_maker import _ChunkMaker
from .ctf_sampling import load_ctf_table, sample_ctf
from .mixture import TRUE_CLASS_COLUMN, TRUE_MORPH_COLUMN, MixtureSpec, sample_mixture_weights
from .junk import NOT_JUNK, assign_junk, offcentre_shifts, parse_junk_types
from .noise import signal_variance
from .poses import sample_rotations, sample_shifts

__all__ = ["SimulationConfig", "SimulationResult", "GroundTruth", "simulate_particles", "simulate_in_memory",
           "sample_ground_truth"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """How to simulate a data set (all lengths in Å, angles in degrees).

    Attributes:
        in_plane_only: One viewing direction, uniform in-plane angle (else uniform SO(3)).
        view_rot_tilt_deg: RELION ``(rot, tilt)`` of that view.
        shift_max_angstrom: Radius of the disc the shifts are drawn from (0 = centred).
        apply_ctf: Multiply by the CTF (else no CTF and no CTF columns).
        defocus_range_angstrom: ``(min, max)`` mean defocus, uniform (underfocus positive).
        defocus_values_angstrom: Mean defocus values (Å), particles split evenly; overrides
            the range.
        ctf_table_path: CTF table to draw rows from (``.npy``, ``.star`` or ``.csv``:
            :func:`~cryopose.simulate.ctf_table.load_ctf_table`; a pickle is refused); overrides both.
        astigmatism_angstrom: ``defocus_u − defocus_v`` (random angle) for range/values.
        voltage_kv, spherical_aberration_mm, amplitude_contrast, phase_shift_deg: Microscope
            constants for range/values (a table gives its own).
        ctf_bfactor_angstrom2: CTF envelope B-factor (``rlnCtfBfactor``), Å².
        snr: Linear SNR (:mod:`cryopose.simulate.noise`); ``None`` = no noise.
        invert_contrast: Multiply the final images by −1 (dark particles).
        junk_fraction: Fraction of junk particles in [0, 1).
        junk_types: Junk types (subset of :data:`cryopose.simulate.junk.JUNK_TYPES`);
            ``other`` needs a ``junk_volume``.
        chunk_size: Images made (and written) at a time; also the noise calibration set.
        pad: Projector padding factor (2, as RELION).
        progress: Show a tqdm progress bar.
        class_fractions: Fractions of a discrete mixture of several volumes
            (:class:`~cryopose.simulate.mixture.MixtureSpec`), one per volume.
        morph: A continuous morph between two volumes.

    Raises:
        UserError: Values out of range (checked on construction).
    """

    in_plane_only: bool = False
    view_rot_tilt_deg: tuple[float, float] = (0.0, 0.0)
    shift_max_angstrom: float = 0.0
    apply_ctf: bool = True
    defocus_range_angstrom: tuple[float, float] = (10000.0, 25000.0)
    defocus_values_angstrom: tuple[float, ...] | None = None
    ctf_table_path: str | None = None
    astigmatism_angstrom: float = 0.0
    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast: float = 0.1
    phase_shift_deg: float = 0.0
    ctf_bfactor_angstrom2: float = 0.0
    snr: float | None = None
    invert_contrast: bool = False
    junk_fraction: float = 0.0
    junk_types: tuple[str, ...] = ("noise", "blob", "offcentre")
    chunk_size: int = 1000
    pad: int = 2
    progress: bool = False
    class_fractions: tuple[float, ...] | None = None
    morph: bool = False

    @property
    def mixture(self) -> MixtureSpec | None:
        """The :class:`~cryopose.simulate.mixture.MixtureSpec`, or ``None`` for one volume."""
        if self.class_fractions is None and not self.morph:
            return None
        return MixtureSpec(class_fractions=self.class_fractions, morph=self.morph)

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        put("junk_types", parse_junk_types(self.junk_types))
        put("view_rot_tilt_deg", tuple(float(v) for v in self.view_rot_tilt_deg))
        put("defocus_range_angstrom", tuple(float(v) for v in self.defocus_range_angstrom))
        if len(self.defocus_range_angstrom) != 2:
            raise UserError("defocus range needs two values: MIN MAX (Å)")
        if self.defocus_values_angstrom is not None:
            put("defocus_values_angstrom", tuple(float(v) for v in self.defocus_values_angstrom))
        if self.snr is not None and not (math.isfinite(self.snr) and self.snr > 0):
            raise UserError(f"SNR must be positive, got {self.snr}")
        if not (math.isfinite(self.shift_max_angstrom) and self.shift_max_angstrom >= 0):
            raise UserError(f"maximum shift must be >= 0 Å, got {self.shift_max_angstrom}")
        if not (0.0 <= self.junk_fraction < 1.0):
            raise UserError(f"junk fraction must be in [0, 1), got {self.junk_fraction}")
        if int(self.chunk_size) < 1:
            raise UserError(f"chunk size must be >= 1, got {self.chunk_size}")
        if int(self.pad) < 1:
            raise UserError(f"padding factor must be >= 1, got {self.pad}")
        lo, hi = self.defocus_range_angstrom
        if lo > hi:
            raise UserError(f"defocus range minimum {lo:g} Å is larger than its maximum {hi:g} Å")
        if self.class_fractions is not None:
            put("class_fractions", tuple(float(v) for v in self.class_fractions))
        self.mixture  # noqa: B018 (validates the fractions)


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Per-particle ground truth drawn before any image is made.

    Attributes:
        rotmats: ``(N, 3, 3)`` float64 RELION matrices.
        shifts_angstrom: ``(N, 2)`` float64 RELION origins in Å.
        ctf: :class:`~cryopose.ctf.CTFParams` of ``N`` particles (``None`` without CTF).
        junk_types: ``(N,)`` str labels (``none`` or a junk type).
        defocus_group: ``(N,)`` index into ``defocus_values_angstrom``, or ``None``.
        weights: ``(N, K)`` structure weights of a mixture or morph, or ``None`` for one volume.
        true_class: ``(N,)`` 0-based class of a discrete mixture, or ``None``.
        morph: ``(N,)`` morph parameter ``t``, or ``None``.
    """

    rotmats: torch.Tensor
    shifts_angstrom: torch.Tensor
    ctf: CTFParams | None
    junk_types: np.ndarray
    defocus_group: np.ndarray | None
    weights: np.ndarray | None = None
    true_class: np.ndarray | None = None
    morph: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate_particles` wrote and the noise it used.

    Attributes:
        star_path, stack_path: The files written.
        n_particles, box_size, pixel_size_angstrom: Data set geometry.
        noise_sigma: σ of the white noise (0 without noise), in the volume's units.
        snr_requested: The configured SNR (``None`` without noise).
        snr_achieved: ``mean var(S_i) / σ²`` over all true particles (``None`` without noise).
        mean_signal_variance: ``mean var(S_i)`` over all true particles.
        n_junk: Number of junk particles.
        seconds: Wall time of the simulation.
    """

    star_path: Path
    stack_path: Path
    n_particles: int
    box_size: int
    pixel_size_angstrom: float
    noise_sigma: float
    snr_requested: float | None
    snr_achieved: float | None
    mean_signal_variance: float
    n_junk: int
    seconds: float


def sample_ground_truth(n_particles: int, *, box_size: int, pixel_size_angstrom: float,
                        config: SimulationConfig, generator: torch.Generator) -> GroundTruth:
    """Draw poses, shifts, CTF and junk labels (see the module docstring for the order)."""
    rotmats = sample_rotations(n_particles, generator=generator, in_plane_only=config.in_plane_only,
                               view_rot_tilt_deg=config.view_rot_tilt_deg)
    shifts = sample_shifts(n_particles, shift_max_angstrom=config.shift_max_angstrom, generator=generator)
    ctf, group = None, None
    if config.apply_ctf:
        table = load_ctf_table(config.ctf_table_path) if config.ctf_table_path is not None else None
        ctf, group = sample_ctf(
            n_particles, generator=generator, defocus_range_angstrom=config.defocus_range_angstrom,
            defocus_values_angstrom=config.defocus_values_angstrom, ctf_table=table,
            astigmatism_angstrom=config.astigmatism_angstrom, voltage_kv=config.voltage_kv,
            spherical_aberration_mm=config.spherical_aberration_mm, amplitude_contrast=config.amplitude_contrast,
            phase_shift_deg=config.phase_shift_deg, bfactor_angstrom2=config.ctf_bfactor_angstrom2)
    labels = assign_junk(n_particles, config.junk_fraction, config.junk_types, generator=generator)
    off = np.flatnonzero(labels == "offcentre")
    if off.size:
        shifts[torch.from_numpy(off)] = offcentre_shifts(off.size, box_size, pixel_size_angstrom, generator=generator)
    weights = classes = morph = None
    if config.mixture is not None:
        weights, classes, morph = sample_mixture_weights(n_particles, config.mixture, generator=generator)
    return GroundTruth(rotmats, shifts, ctf, labels, group, weights, classes, morph)


def _as_volume(volume, what: str) -> torch.Tensor:
    v = volume if isinstance(volume, torch.Tensor) else torch.tensor(np.asarray(volume, dtype=np.float32))
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise UserError(f"{what} must be a cubic (n, n, n) volume, got shape {tuple(v.shape)}")
    return v.detach().to(torch.float32)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _prepare(volume, pixel_size_angstrom: float, n_particles: int, config: SimulationConfig,
             generator: torch.Generator, junk_volume) -> _ChunkMaker:
    """Validate the inputs, draw the ground truth and prepare the projectors."""
    many = isinstance(volume, (list, tuple))
    vols = [_as_volume(v, f"volume {i + 1}") for i, v in enumerate(volume)] if many else None
    spec = config.mixture
    if spec is not None and (not many or len(vols) != spec.n_structures):
        given = len(vols) if many else 1
        what = "a morph" if spec.morph else "one per class fraction"
        raise UserError(f"the mixture needs {spec.n_structures} structures ({what}), got {given}")
    if spec is None and many:
        raise UserError(f"{len(vols)} structures need class fractions or a morph")
    if many and any(v.shape != vols[0].shape for v in vols):
        raise UserError("mixture volumes differ in box: " + ", ".join(str(v.shape[-1]) for v in vols) + " px")
    vol = vols[0] if many else _as_volume(volume, "volume")
    n = vol.shape[-1]
    if int(n_particles) < 1:
        raise UserError(f"number of particles must be >= 1, got {n_particles}")
    if "other" in config.junk_types and config.junk_fraction > 0 and junk_volume is None:
        raise UserError("junk type 'other' needs a second structure (--junk-structure)")
    junk = None
    if junk_volume is not None and "other" in config.junk_types:
        junk = _as_volume(junk_volume, "junk structure")
        if junk.shape != vol.shape:
            raise UserError(f"junk structure is {junk.shape[-1]} px, the volume {n} px; put both on one grid")
    truth = sample_ground_truth(int(n_particles), box_size=n, pixel_size_angstrom=pixel_size_angstrom,
                                config=config, generator=generator)
    with torch.no_grad():
        vft = [prepare_volume_ft(v, pad=config.pad) for v in vols] if many else prepare_volume_ft(vol, pad=config.pad)
        junk_vft = prepare_volume_ft(junk, pad=config.pad) if junk is not None else None
    return _ChunkMaker(vft, junk_vft, pixel_size_angstrom, truth, config)


def _iterate(maker: _ChunkMaker, generator: torch.Generator):
    """Yield ``(slice, noise-free images, final images)`` chunk by chunk."""
    n_particles = len(maker.truth.junk_types)
    for sl in _chunks(n_particles, int(maker.config.chunk_size)):
        clean, labels = maker.clean(sl, generator)
        if maker.target_variance is None:
            maker.calibrate(clean, labels, sl)
        clean = maker.scale_junk(clean, labels)
        yield sl, clean, maker.add_noise(clean, labels, generator)


def _metadata(truth: GroundTruth, *, n: int, pixel_size_angstrom: float, box_size: int, variances: np.ndarray,
              sigma: float, config: SimulationConfig, stack_path: str | None, source: str) -> ParticleMetadata:
    table = pd.DataFrame({
        "rlnCryoposeIsOutlier": (truth.junk_types != NOT_JUNK).astype(np.int64),
        "rlnCryoposeJunkType": truth.junk_types.astype(object),
        "rlnCryoposeSignalVariance": variances.astype(np.float64),
        "rlnCryoposeNoiseSigma": np.full(n, sigma, dtype=np.float64),
        "rlnCryoposeSNR": np.full(n, config.snr if config.snr is not None else 0.0, dtype=np.float64),
        "rlnCryoposeInvertedContrast": np.full(n, int(config.invert_contrast), dtype=np.int64),
    })
    if truth.true_class is not None:
        from_structure = (truth.junk_types == NOT_JUNK) | (truth.junk_types == "offcentre")
        table[TRUE_CLASS_COLUMN] = np.where(from_structure, truth.true_class + 1, 0).astype(np.int64)
    if truth.morph is not None:
        table[TRUE_MORPH_COLUMN] = truth.morph.astype(np.float64)
    return ParticleMetadata(
        pixel_size_angstrom=pixel_size_angstrom, box_size=box_size, rotmats=truth.rotmats.to(torch.float32),
        shifts_angstrom=truth.shifts_angstrom.to(torch.float32), ctf=truth.ctf,
        image_paths=None if stack_path is None else [stack_path] * n,
        image_indices=np.arange(n, dtype=np.int64), optics_group=np.ones(n, dtype=np.int64), table=table,
        source=source)


def _generator(generator) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    g.manual_seed(int(generator))
    return g


def _output_paths(output) -> tuple[Path, Path]:
    out = Path(output)
    if out.suffix.lower() in (".star", ".mrcs"):
        out = out.with_suffix("")
    return out.with_name(out.name + ".star"), out.with_name(out.name + ".mrcs")


def simulate_particles(volume, *, pixel_size_angstrom: float, n_particles: int, config: SimulationConfig,
                       generator: torch.Generator | int, output: str | os.PathLike,
                       junk_volume=None) -> SimulationResult:
    """Simulate a particle data set and write ``OUT.mrcs`` + ``OUT.star`` (streaming).

    Args:
        volume: ``(n, n, n)`` volume ``(z, y, x)`` (numpy or torch), origin ``n // 2``; the
            images are ``n × n``. A list of such volumes (one box) for a mixture
            (``config.class_fractions``, one per volume) or a morph (``config.morph``, two).
        pixel_size_angstrom: Pixel size in Å of the volume and the images.
        n_particles: Number of particles ``N`` (>= 1).
        config: :class:`SimulationConfig`.
        generator: ``torch.Generator`` (CPU) or an integer seed.
        output: Output stem ``OUT`` (a ``.star``/``.mrcs`` suffix is stripped); its folder
            must exist. ``OUT.star`` names the images ``N@OUT.mrcs`` with ``OUT`` as given,
            as ``relion_project --o OUT`` does: a relative ``OUT`` is relative to the current
            folder (RELION resolves names from the folder it runs in), an absolute one stays
            absolute.
        junk_volume: ``(n, n, n)`` second structure for the ``other`` junk type.

    Returns:
        :class:`SimulationResult`.

    Raises:
        UserError: Bad configuration (see :class:`SimulationConfig`), ``N < 1``, a non-cubic
            volume, or ``other`` junk without ``junk_volume``.
        InputFileError: Unreadable CTF table.
    """
    t0 = time.perf_counter()
    g = _generator(generator)
    star_path, stack_path = _output_paths(output)
    if not star_path.parent.is_dir():
        raise UserError(f"output folder {star_path.parent} does not exist")
    maker = _prepare(volume, pixel_size_angstrom, n_particles, config, g, junk_volume)
    n = maker.n
    variances = np.zeros(int(n_particles), dtype=np.float64)
    from tqdm import tqdm

    with StackWriter(stack_path, int(n_particles), n, pixel_size_angstrom) as writer, \
            tqdm(total=int(n_particles), unit="img", desc="simulate", disable=not config.progress) as bar:
        for sl, clean, final in _iterate(maker, g):
            variances[sl] = signal_variance(clean).numpy()
            writer.write(sl.start, final.numpy())
            bar.update(sl.stop - sl.start)
    truth = maker.truth
    meta = _metadata(truth, n=int(n_particles), pixel_size_angstrom=pixel_size_angstrom, box_size=n,
                     variances=variances, sigma=maker.sigma, config=config,
                     stack_path=str(stack_path.absolute()), source=str(star_path))
    from ..io.star import write_star

    name = stack_path.as_posix()  # as the user named it, like relion_project's STAR
    write_star(star_path, meta, image_names=[f"{i:06d}@{name}" for i in range(1, int(n_particles) + 1)])
    good = truth.junk_types == NOT_JUNK
    mean_var = float(variances[good].mean()) if good.any() else float(maker.target_variance)
    achieved = mean_var / maker.sigma**2 if maker.sigma > 0 else None
    return SimulationResult(star_path=star_path, stack_path=stack_path, n_particles=int(n_particles), box_size=n,
                            pixel_size_angstrom=float(pixel_size_angstrom), noise_sigma=float(maker.sigma),
                            snr_requested=config.snr, snr_achieved=achieved, mean_signal_variance=mean_var,
                            n_junk=int((~good).sum()), seconds=time.perf_counter() - t0)


def simulate_in_memory(volume, *, pixel_size_angstrom: float, n_particles: int,
                       config: SimulationConfig | None = None, generator: torch.Generator | int = 0,
                       junk_volume=None, return_clean: bool = False):
    """Simulate a small data set in memory (for tests and other modules' tests).

    Same images and ground truth as :func:`simulate_particles` with the same arguments.

    Args:
        volume, pixel_size_angstrom, n_particles, config, generator, junk_volume: As for
            :func:`simulate_particles` (``config`` defaults to ``SimulationConfig()``).
        return_clean: Also return the noise-free images (before noise and contrast inversion).

    Returns:
        ``(images, metadata)``: float32 ``(N, n, n)`` tensor and
        :class:`~cryopose.io.particles.ParticleMetadata` (no image paths; the simulation
        columns in ``metadata.table``), or ``(images, metadata, clean)`` with ``return_clean``.
    """
    config = config or SimulationConfig()
    g = _generator(generator)
    maker = _prepare(volume, pixel_size_angstrom, n_particles, config, g, junk_volume)
    n = maker.n
    images = torch.empty(int(n_particles), n, n, dtype=torch.float32)
    clean_all = torch.empty_like(images) if return_clean else None
    variances = np.zeros(int(n_particles), dtype=np.float64)
    for sl, clean, final in _iterate(maker, g):
        variances[sl] = signal_variance(clean).numpy()
        images[sl] = final
        if clean_all is not None:
            clean_all[sl] = clean
    meta = _metadata(maker.truth, n=int(n_particles), pixel_size_angstrom=pixel_size_angstrom, box_size=n,
                     variances=variances, sigma=maker.sigma, config=config, stack_path=None, source="<simulated>")
    return (images, meta, clean_all) if return_clean else (images, meta)

