"""Frozen, keyword-only configurations of CryoPoseNet ab initio runs.

:class:`ModelConfig` fixes the network and the volume, :class:`TrainingConfig` the optimisation,
:class:`AbinitioConfig` the whole run (data preprocessing, model, training, final
reconstruction). Defaults are the settings measured to converge in ``benchmarks/abinitio.py``
(its ``ablation`` section turns each addition to the paper off in turn; the module docstring of
:mod:`cryopose.training.trainer` describes a step). On by default, beyond Nashed et al.: the
search warm-up (with it the encoder's and the final poses were better in the benchmark's
ablation; with the earlier settings of this project the paper's gradient descent alone stalled),
cryoAI's symmetrised loss, four hypotheses per image, batch normalisation, frequency marching
from half Nyquist, and one round of local polishing. Every config
checks its values on construction and raises :class:`cryopose.errors.UserError` with a message
naming the bad option.
"""

from __future__ import annotations

import dataclasses
import math

from ..errors import UserError
from ..models.pose_heads import POSE_PARAMETERISATIONS

__all__ = ["ModelConfig", "TrainingConfig", "AbinitioConfig", "config_from_dict", "auto_working_box", "auto_epochs",
           "AUTO_WORKING_PIXEL_ANGSTROM", "AUTO_IMAGE_STEPS"]

#: Working pixel size (Å) the automatic working box aims at: the demo's (64 px at 5.53 Å cropped
#: to 32 px, 11.06 Å), where the encoder's poses, polished at the full box, reached 2.0°.
AUTO_WORKING_PIXEL_ANGSTROM = 10.0

#: Images the automatic number of epochs aims to show the network (epochs × particles): the
#: demo trains on 3 × 10,000.
AUTO_IMAGE_STEPS = 50_000


def auto_working_box(image_box: int, pixel_size_angstrom: float) -> int:
    """The working box chosen from the field of view: pixels of about 10 Å.

    ``round(image_box · pixel / 10 Å)`` made even, kept within 32–48 px and never larger than
    the images. Below 32 px the encoder sees too little; above 48 px a step costs far more
    than the pixel count says (on 2 busy cores, ``benchmarks/training_step.py``: 2.95 s per
    step at 40 px, 26.9 s at 64 px — the 3D slicing's scatter into the 2×-padded map's
    transform leaves the cache), for detail that the polishing at the full box recovers
    anyway. Training at this coarse box
    is the first stage of the resolution schedule; polishing then reads the particles at their
    full box up to the resolution each map reaches (:class:`AbinitioConfig`).

    Args:
        image_box: The particles' box, px.
        pixel_size_angstrom: Their pixel size, Å.

    Returns:
        The working box, px (even).
    """
    fov = float(image_box) * float(pixel_size_angstrom)
    box = 2 * int(round(fov / AUTO_WORKING_PIXEL_ANGSTROM / 2.0))
    return int(min(int(image_box), max(32, min(48, box))))


def auto_epochs(n_particles: int) -> int:
    """Epochs when ``--epochs`` is not given: about 50,000 images shown, 1 to 20 epochs.

    What trains the encoder and the map is the number of steps, not of passes: 2,000 particles
    get 20 epochs (the earlier fixed default), 10,000 get 5, 20,000 get 3, 100,000 one.
    """
    return int(min(20, max(1, math.ceil(AUTO_IMAGE_STEPS / max(1, int(n_particles))))))


def _positive(name: str, value, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "an integer" if integer else "a number"
        raise UserError(f"{name} must be {kind} {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Network and volume of CryoPoseNet.

    Attributes:
        pose_param: Rotation parameterisation of the pose head: ``"s2s2"`` (default, continuous
            6D), ``"quaternion"`` or ``"euler"``.
        n_hypotheses: Pose hypotheses per image; the loss keeps the best (1 = the paper).
        shift_head: Predict a per-image shift correction added to the metadata's shifts.
        max_shift_angstrom: Bound of the shift head per axis, Å.
        channels: Filters of the three conv blocks (paper: 32, 64, 128).
        hidden: MLP widths (paper: 512, 512).
        batch_norm: Batch normalisation in the encoder (not in the paper).
        volume_init: ``"noise"`` (i.i.d. Gaussian) or ``"zeros"``.
        volume_init_std: Std of the noise start, in units of the volume scale.
        mask_radius: Radius of the soft spherical support of the volume as a fraction of
            ``n / 2`` (``None`` = no support mask).
        symmetry: Point group imposed on the volume (RELION symbols; ``"C1"`` = none). Not
            recommended for ab initio: on β-gal (D2) at SNR 0.1, imposing D2 from a random start
            stalled at ~45° median error on a data set where C1 training converged.
    """

    pose_param: str = "s2s2"
    n_hypotheses: int = 4
    shift_head: bool = False
    max_shift_angstrom: float = 20.0
    channels: tuple[int, ...] = (32, 64, 128)
    hidden: tuple[int, ...] = (512, 512)
    batch_norm: bool = True
    volume_init: str = "noise"
    volume_init_std: float = 0.1
    mask_radius: float | None = 0.9
    symmetry: str = "C1"

    def __post_init__(self):
        if self.pose_param not in POSE_PARAMETERISATIONS:
            raise UserError(f"--pose-param must be one of {', '.join(sorted(POSE_PARAMETERISATIONS))}, "
                            f"got {self.pose_param!r}")
        _positive("n_hypotheses", self.n_hypotheses, integer=True)
        _positive("max_shift_angstrom", self.max_shift_angstrom)
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "hidden", tuple(int(c) for c in self.hidden))
        if len(self.channels) < 1 or len(self.hidden) < 1 or min(self.channels + self.hidden) < 1:
            raise UserError("encoder channels and hidden widths must be positive")
        if self.volume_init not in ("noise", "zeros"):
            raise UserError(f"volume_init must be 'noise' or 'zeros', got {self.volume_init!r}")
        _positive("volume_init_std", self.volume_init_std, allow_zero=True)
        if self.mask_radius is not None and not (0 < self.mask_radius <= 1.5):
            raise UserError(f"mask_radius must be in (0, 1.5] (fraction of half the box), got {self.mask_radius}")
        from ..symmetry import canonical_symbol

        object.__setattr__(self, "symmetry", canonical_symbol(self.symmetry))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Optimisation of CryoPoseNet (Adam on encoder and volume jointly).

    Attributes:
        epochs: Passes over the particles (``None`` = :func:`auto_epochs` of the data set's size,
            settled by :func:`cryopose.pipelines.abinitio.resolve_config`).
        batch_size: Images per step.
        lr: Adam learning rate of the encoder and heads.
        volume_lr: Adam learning rate of the volume parameters (dimensionless, see
            :class:`cryopose.models.volume.VoxelVolume`).
        symmetric_loss: cryoAI's symmetrised loss (Levy et al. 2022): also encode the image
            turned by 180° and keep the better of the two poses.
        hypothesis_mean_weight: Weight of the mean over candidate poses added to the best one.
        lr_final_fraction: Both learning rates follow a cosine from their value to this fraction
            of it over the run (1 = constant).
        march_start: Frequency marching: loss radius at the start, fraction of Nyquist.
        march_fraction: Fraction of the training steps over which the radius grows linearly to
            Nyquist (0 = no marching).
        search_fraction: Search warm-up: during this fraction of the steps every image also gets
            the best pose of a global grid search against the current volume as a candidate, and
            the encoder is pulled towards each image's winning pose
            (:mod:`cryopose.training.pose_search`; 0 = the paper's pure gradient descent).
        search_step_deg: Angular step of the warm-up's SO(3) grid (15° = 4,608 rotations).
        search_mode: ``"candidate"``: the search pose is one more candidate of the best-candidate
            loss (map and encoder learn from each image's best); ``"replace"``: the map learns
            from the search poses only (cryoSPARC's SGD ab initio) and the encoder from its own
            best candidate against the map held fixed.
        search_radius_fraction: Largest band radius of the warm-up's search as a fraction of
            Nyquist (below it the band follows the frequency-marching radius).
        distill_weight: Weight of the squared chordal distance of the encoder's nearest
            hypothesis to the winning pose during the warm-up.
        seed: Seed of every random choice (initialisation, batch order). The thread count,
            device and precision are not here: they are run-time settings
            (:class:`cryopose.runtime.Runtime`), so a resumed run may change them.
        log_every: Steps between loss-history entries.
    """

    epochs: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    volume_lr: float = 0.05
    symmetric_loss: bool = True
    hypothesis_mean_weight: float = 0.0
    lr_final_fraction: float = 1.0
    march_start: float = 0.5
    march_fraction: float = 0.5
    search_fraction: float = 0.5
    search_step_deg: float = 15.0
    search_mode: str = "candidate"
    search_radius_fraction: float = 0.75
    distill_weight: float = 1.0
    seed: int = 0
    log_every: int = 10

    def __post_init__(self):
        if self.epochs is not None:
            _positive("--epochs", self.epochs, integer=True)
        _positive("--batch-size", self.batch_size, integer=True)
        _positive("--lr", self.lr)
        _positive("volume_lr", self.volume_lr)
        _positive("hypothesis_mean_weight", self.hypothesis_mean_weight, allow_zero=True)
        if not (0 < self.lr_final_fraction <= 1):
            raise UserError(f"lr_final_fraction must be in (0, 1], got {self.lr_final_fraction}")
        if not (0 < self.march_start <= 1):
            raise UserError(f"march_start must be in (0, 1], got {self.march_start}")
        if not (0 <= self.march_fraction <= 1):
            raise UserError(f"march_fraction must be in [0, 1], got {self.march_fraction}")
        if not (0 <= self.search_fraction <= 1):
            raise UserError(f"search_fraction must be in [0, 1], got {self.search_fraction}")
        _positive("search_step_deg", self.search_step_deg)
        if self.search_mode not in ("candidate", "replace"):
            raise UserError(f"search_mode must be 'candidate' or 'replace', got {self.search_mode!r}")
        if not (0 < self.search_radius_fraction <= 1):
            raise UserError(f"search_radius_fraction must be in (0, 1], got {self.search_radius_fraction}")
        _positive("distill_weight", self.distill_weight, allow_zero=True)
        if not isinstance(self.seed, int):
            raise UserError(f"--seed must be an integer, got {self.seed!r}")
        _positive("log_every", self.log_every, integer=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AbinitioConfig:
    """A whole ab initio run.

    Attributes:
        box_size: Working box of the training in pixels (images Fourier-cropped to it);
            ``None`` = :func:`auto_working_box` (pixels of about 10 Å, 32–48 px). The final map
            is reconstructed, and the poses polished, at the original box.
        invert_contrast: Particles are dark on a bright background (multiply by −1 first);
            ``None`` = detect it from the data (:func:`cryopose.data.preprocess.centre_particles`).
        estimate_shifts: Estimate per-particle origins: centre the particles on their
            rotational average first, learn corrections with the shift head and refine them in
            polishing. ``None`` = when the input has no origins (as a picker's particles).
        whiten: Estimate the noise power spectrum from the particles' background and whiten
            images and model projections with it (:mod:`cryopose.data.preprocess`).
        per_image_normalization: RELION's per-image normalisation (background mean 0, s.d. 1
            in every image) instead of background mean 0 per image and one global scale (s.d. 1
            over the data set). Off by default: on the demo's particles (one noise level) it
            made the poses worse (median 4.08° against 3.70°, encoder 10.35° against 9.49°, one
            seed, one polishing round); it is for data sets whose noise level varies between micrographs.
        model: :class:`ModelConfig`.
        training: :class:`TrainingConfig`.
        reconstruct: Reconstruct ``map.mrc`` and half maps from the inferred poses at the end.
        polish_rounds: Rounds of local refinement of the encoder's poses against the map at the
            particles' full box, each followed by a new reconstruction
            (:mod:`cryopose.pipelines.polish`; 0 = the encoder's poses as they are). Needs
            ``reconstruct``. Each round reads frequencies up to 0.9 × the half-map FSC = 0.143
            resolution of the round before (a resolution schedule: the band grows as the map
            improves). After the subset iterations (``polish_subset_iterations``), two rounds
            (one global, one local) cost 164 s on 5,000 realistic β-gal particles against 218 s
            for three (two global, one local), for a median error of 1.12° against 1.02° and a
            last map of 10.04 Å against 9.94 Å (``benchmarks/polish_schedule.py``).
        polish_global_rounds: The first this many polishing rounds search every pose globally
            (:func:`cryopose.search.projection_matching.search_poses`: the 15° SO(3) grid of the
            map's asymmetric unit, refined locally down to ``polish_start_step_deg``, origins on a
            ±2-pixel lattice around the current ones) instead of locally around the current pose;
            the later rounds are local. The encoder's large errors are not local: on 20,000
            realistic β-gal particles (40 % in one view, no origins) the encoder had the
            preferred view right and the other views 45° off (median). From the same trained
            encoder, the final map fitted onto the truth reached 17.5 Å with three local rounds,
            14.7 Å with one global and two local rounds (median pose error 8.51° → 4.81°), and
            14.9 Å with two global rounds and one local (4.08°) at more than twice the polishing
            time (``docs/results/real-conditions.md``). Since the subset iterations correct the
            encoder's map first, one global round is the default. 0 = every round local.
        polish_start_step_deg: First step of the first local round's lattice, degrees (a later
            local round starts at half of it; :class:`cryopose.pipelines.polish.PolishSchedule`).
        polish_final_step_deg: Last step of the last round, degrees (halvings from the first;
            the rounds before it and the rescues stop at twice it).
        polish_subset_iterations: Before the polishing rounds, at most this many iterations of
            global search and reconstruction on 3,000 particles at the working box, until their
            poses stop moving or settling (:mod:`cryopose.pipelines.polish_subset`); their map
            starts the first round. On 20,000 realistic β-gal particles (40 % in one view) the encoder's
            side views came out pulled towards the preferred axis and the map distorted with
            them; on one seed of three the rounds alone left the side views 20° off, the
            iterations brought them to 1.2° (median 5.07° → 1.07°). 0 = none.
        polish_marginal_start: When the subset iterations' poses have collapsed onto few views
            (more than a tenth of the Fourier directions undersampled), run them again from a map
            found without the encoder (expectation-maximisation over a pose grid from random
            poses, :func:`cryopose.search.marginal.marginal_ab_initio`) and keep the start whose
            map the subset's particles fit better
            (:func:`cryopose.pipelines.polish_subset.polish_from_subset`).
            On 4AKE chain A (24 kDa) the encoder's poses collapsed onto one view and every
            polishing from them failed (median 19.1°); the marginal start found the map. Needs
            a global first round (``polish_global_rounds``).
        polish_rescue: After each local polishing round, search globally the particles whose
            score falls in the low mode of the round's scores
            (:func:`cryopose.pipelines.polish.rescue_low_scores`, as ``refine`` does).
        symmetry: Point group of the particles (RELION symbols). The training stays in the
            model's point group (``model.symmetry``, C1 by default, as cryoSPARC's and RELION's
            ab initio); after it the encoder's map is centred, its symmetry axes are found
            (:func:`cryopose.reconstruction.symmetry_axes.find_symmetry_axes`), every pose is
            turned into the group's frame, and the polishing rounds and the final map impose the
            group (a homogeneous refinement with symmetry). ``"C1"`` = ``model.symmetry``.
    """

    box_size: int | None = None
    invert_contrast: bool | None = None
    estimate_shifts: bool | None = None
    whiten: bool = True
    per_image_normalization: bool = False
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    reconstruct: bool = True
    polish_rounds: int = 2
    polish_global_rounds: int = 1
    polish_start_step_deg: float = 3.75
    polish_final_step_deg: float = 0.9375
    polish_rescue: bool = True
    polish_subset_iterations: int = 20
    polish_marginal_start: bool = True
    symmetry: str = "C1"

    def __post_init__(self):
        from ..symmetry import canonical_symbol

        object.__setattr__(self, "symmetry", canonical_symbol(self.symmetry))
        if self.symmetry == "C1" and self.model.symmetry != "C1":
            object.__setattr__(self, "symmetry", self.model.symmetry)
        if self.model.symmetry not in ("C1", self.symmetry):
            raise UserError(f"--symmetry {self.symmetry} and --train-symmetry {self.model.symmetry} differ: the map "
                            "trained in a point group keeps it (give one, or train in C1)")
        if self.box_size is not None:
            _positive("--box-size", self.box_size, integer=True)
            if self.box_size < 16:
                raise UserError(f"--box-size must be at least 16 px, got {self.box_size}")
        _positive("--polish-rounds", self.polish_rounds, integer=True, allow_zero=True)
        _positive("--global-rounds", self.polish_global_rounds, integer=True, allow_zero=True)
        _positive("--subset-iterations", self.polish_subset_iterations, integer=True, allow_zero=True)
        _positive("polish_start_step_deg", self.polish_start_step_deg)
        _positive("polish_final_step_deg", self.polish_final_step_deg)


#: Keys of older saved training configs that are run-time settings now (dropped on reading).
_RUNTIME_KEYS = ("num_threads",)


def config_from_dict(doc: dict) -> AbinitioConfig:
    """Rebuild an :class:`AbinitioConfig` from ``dataclasses.asdict`` output (checkpoints).

    Run-time settings that files written before :mod:`cryopose.runtime` stored in the training
    config (``num_threads``) are dropped: they never changed what was computed.
    """
    doc = dict(doc)
    model = ModelConfig(**doc.pop("model", {}))
    training_doc = {k: v for k, v in dict(doc.pop("training", {})).items() if k not in _RUNTIME_KEYS}
    training = TrainingConfig(**training_doc)
    return AbinitioConfig(model=model, training=training, **doc)
