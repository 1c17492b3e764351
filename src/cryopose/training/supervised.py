"""Supervised orientation regression: losses, trainer, cross-validation of the loss weight.

Follows Lian, Huang, Zhang & Ling, "End-to-end orientation estimation from 2D cryo-EM
images", Acta Cryst. D 78 (2022):

* **Loss** ``ℓ = w · ℓ_QD + (1 − w) · ℓ_reproj``.
  ``ℓ_QD = 1 − ⟨q_pred, q_gt⟩²`` (quaternion distance; sign-invariant since ``q`` and ``−q``
  are one rotation; 0 when equal, 1 at 180°). ``ℓ_reproj`` is the L1 distance between the
  reference's CTF-free, noise-free projections along the predicted and the labelled rotation
  (Fourier-slice projector of :mod:`cryopose.projection`, differentiable in the rotation),
  divided by the mean ``|P|`` of the reference's projections so that it is O(1) like
  ``ℓ_QD``. For a map with point-group symmetry, ``R`` and ``R S`` project identically, so
  ``ℓ_reproj`` does not penalise symmetry-equivalent predictions; ``ℓ_QD`` does, unless
  ``qd_symmetry_aware`` (not in the paper, on by default) takes its minimum over the group;
  with the paper's ℓ_QD the label's symmetry mate, arbitrary for uniformly drawn labels, is a
  target the network cannot learn (``benchmarks/supervised.py``, β-gal at SNR 0.1, 32 px:
  median error 46.8° with the paper's ℓ_QD, 26.3° modulo D2, both with quarter turns).
* **Optimiser** Adam with an ℓ2 penalty (``weight_decay`` 1e−4), learning rate divided by 5
  after 80 % of the iterations (``lr_schedule="cosine"``, not in the paper, decays it along half a
  cosine instead); **split** 4:1 train/test (random, seeded).
* **In-plane augmentation** (``augment_inplane``, not in the paper; quarter turns by default): each
  training image is turned in its plane by a random angle and its label with it
  (``R → Rz(θ) R``, :func:`cryopose.rotations.inplane_rotation`), which is exact for the
  noise, the CTF and the label alike. ``"quarter"`` turns by multiples of 90° (a pixel
  permutation, no interpolation: 4 × the labelled data); ``"continuous"`` by any angle (bicubic
  interpolation, which slightly smooths the noise of the turned images). Same benchmark:
  73.1° without augmentation, 46.8° with quarter turns, 50.4° with continuous turns.
  At inference, :func:`predict_rotmats` can also average the predictions for the four quarter
  turns of each image (``test_time_turns``, modulo the point group; see
  :meth:`cryopose.models.supervised.OrientationRegressor.predict_rotmat`).
* **Choice of w** (:func:`cross_validate_w`): five-fold cross-validation on the training set
  over ``w = 0.0, 0.1, …, 1.0``; each fold's held-out particles are scored by a criterion that
  does not depend on ``w`` (median geodesic error modulo the point group by default, or the
  reprojection RMSE of :mod:`cryopose.metrics.reprojection`), the ``w`` with the best mean
  criterion wins.

Images come from a tensor ``(N, n, n)`` or any object with ``len()`` and
``source[index_array]`` (e.g. a lazily read :class:`cryopose.io.particles.ParticleStack`);
only one batch is read at a time.

On a CPU, call ``torch.set_flush_denormal(True)`` before a long training, as the ``cryopose``
commands do (:func:`cryopose.cli.common.configure_torch`): subnormal weights and moments
otherwise slow the steps several-fold late in a run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..metrics.pose_error import symmetry_aware_errors
from ..metrics.reprojection import reprojection_rmse
from ..models.supervised import MODEL_KIND, OrientationRegressor, SupervisedModelConfig
from ..rotations import rotmat_to_quaternion
from ..symmetry import canonical_symbol
from .supervised_losses import (AUGMENTATIONS, ReprojectionLoss, _group_quaternions, augment_inplane,
                                quaternion_distance_loss, symmetric_quaternion_distance_loss)

__all__ = [
    "SupervisedTrainConfig",
    "TrainResult",
    "CVResult",
    "split_train_test",
    "train_supervised",
    "evaluate_model",
    "predict_rotmats",
    "cross_validate_w",
    "save_checkpoint",
    "DEFAULT_W_GRID",
    "LR_SCHEDULES",
]

#: Values of ``SupervisedTrainConfig.lr_schedule``.
LR_SCHEDULES = ("step", "cosine")

#: The paper's grid of loss weights for cross-validation: 0.0, 0.1, …, 1.0.
DEFAULT_W_GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SupervisedTrainConfig:
    """Training options (paper defaults where the paper gives one).

    Attributes:
        iterations: Optimiser steps.
        batch_size: Images per step.
        learning_rate: Initial Adam learning rate.
        weight_decay: ℓ2 penalty of Adam (paper: 1e−4).
        lr_decay_at: Fraction of ``iterations`` after which the rate is multiplied by
            ``lr_decay_factor`` (paper: 0.8 and 1/5).
        lr_decay_factor: See ``lr_decay_at``.
        lr_schedule: ``"step"`` (the paper's: ``lr_decay_at`` and ``lr_decay_factor``) or
            ``"cosine"`` (half a cosine from ``learning_rate`` to 0 over ``iterations``;
            Loshchilov & Hutter, ICLR 2017; the two ``lr_decay_*`` options are then unused).
        w: Weight of ``ℓ_QD`` (``1 − w`` on ``ℓ_reproj``), in [0, 1].
        test_fraction: Held-out fraction (paper: 4:1 split → 0.2).
        symmetry: Point group of the reference (for metrics and the optional symmetric ℓ_QD).
        qd_symmetry_aware: Use ``min_S ℓ_QD(q_pred, q_gt ∘ S)`` (not in the paper, which is
            ``False``; no effect in C1).
        reproj_box_size: Box of the projections in ``ℓ_reproj`` (Fourier-cropped reference;
            default the model's box).
        seed: Seeds the split, the initial weights and the batch order.
        eval_every: Evaluate on the test set every this many steps (0: only at the end).
        eval_max_particles: Largest number of test particles scored per evaluation.
        augment_inplane: ``"quarter"`` (default), ``"continuous"`` or ``"none"`` (the paper):
            turn each training image and its label in the image plane (module docstring).
    """

    iterations: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    lr_decay_at: float = 0.8
    lr_decay_factor: float = 0.2
    lr_schedule: str = "step"
    w: float = 0.5
    test_fraction: float = 0.2
    symmetry: str = "C1"
    qd_symmetry_aware: bool = True
    reproj_box_size: int | None = None
    seed: int = 0
    eval_every: int = 0
    eval_max_particles: int = 2000
    augment_inplane: str = "quarter"

    def __post_init__(self):
        if not 0.0 <= self.w <= 1.0:
            raise ValueError(f"w must be in [0, 1], got {self.w}")
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("iterations and batch_size must be >= 1")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning rate must be positive, got {self.learning_rate}")
        canonical_symbol(self.symmetry)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.augment_inplane not in AUGMENTATIONS:
            raise ValueError(f"augment_inplane must be one of {AUGMENTATIONS}, got {self.augment_inplane!r}")


@dataclasses.dataclass
class TrainResult:
    """Output of :func:`train_supervised`.

    Attributes:
        model: The trained :class:`OrientationRegressor` (eval mode).
        history: Per-step ``loss``, ``loss_qd``, ``loss_reproj``, ``lr`` lists and evaluations.
        test_metrics: :func:`evaluate_model` on the test split (empty without one).
        train_indices, test_indices: The split (int64 arrays of particle positions).
        seconds: Training wall time.
    """

    model: OrientationRegressor
    history: dict
    test_metrics: dict
    train_indices: np.ndarray
    test_indices: np.ndarray
    seconds: float


@dataclasses.dataclass
class CVResult:
    """Output of :func:`cross_validate_w`.

    Attributes:
        best_w: The ``w`` with the best mean criterion.
        w_values: The grid searched.
        criterion: Name of the criterion (lower is better).
        scores: ``(len(w_values), n_folds)`` criterion per ``w`` and fold.
        mean_scores: Mean over folds per ``w``.
        seconds: Wall time.
    """

    best_w: float
    w_values: list
    criterion: str
    scores: np.ndarray
    mean_scores: np.ndarray
    seconds: float

    def as_dict(self) -> dict:
        """JSON-serialisable summary."""
        return {"best_w": self.best_w, "criterion": self.criterion, "w_values": list(self.w_values),
                "mean_scores": [float(v) for v in self.mean_scores],
                "scores": [[float(v) for v in row] for row in self.scores], "seconds": self.seconds}


def split_train_test(n: int, test_fraction: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random split of ``n`` particles: ``(train, test)`` sorted int64 positions (4:1 for 0.2)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _read(source, idx: np.ndarray) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        return source[torch.as_tensor(idx, dtype=torch.long)].float()
    return torch.as_tensor(source[np.asarray(idx, dtype=np.int64)]).float()


@torch.no_grad()
def predict_rotmats(model: OrientationRegressor, images, indices=None, *, batch_size: int = 256,
                    test_time_turns: bool = False, symmetry: str = "C1") -> torch.Tensor:
    """Predicted rotations ``(M, 3, 3)`` of the particles ``indices`` (default all), eval mode.

    ``test_time_turns`` averages the predictions for the four quarter turns of each image
    modulo ``symmetry`` (:meth:`OrientationRegressor.predict_rotmat`).
    """
    was_training = model.training
    model.eval()
    idx = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    dev = next(model.parameters()).device
    out = [model.predict_rotmat(_read(images, idx[s:s + batch_size]).to(dev), test_time_turns=test_time_turns,
                                symmetry=symmetry).cpu()
           for s in range(0, idx.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 3, 3)


def evaluate_model(model: OrientationRegressor, images, rotmats: torch.Tensor, indices, *, symmetry: str = "C1",
                   reference_volume=None, reproj_box_size: int | None = None,
                   test_time_turns: bool = False) -> dict:
    """Pose errors of a model on some particles (``test_time_turns``: see :func:`predict_rotmats`).

    Returns:
        Dict with ``n``, ``median_error_deg``, ``mean_error_deg`` (geodesic, modulo the point
        group, in the labels' frame: no global alignment) and, with a reference,
        ``reprojection_rmse`` (:func:`cryopose.metrics.reprojection.reprojection_rmse`,
        normalised).
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return {}
    pred = predict_rotmats(model, images, idx, test_time_turns=test_time_turns, symmetry=symmetry)
    gt = torch.as_tensor(rotmats)[torch.as_tensor(idx)]
    err = symmetry_aware_errors(pred.double(), gt.double(), symmetry=symmetry)
    out = {"n": int(idx.size), "median_error_deg": float(err.median()), "mean_error_deg": float(err.mean())}
    if reference_volume is not None:
        rep = reprojection_rmse(reference_volume, pred, gt, box_size=reproj_box_size)
        out["reprojection_rmse"] = rep.rmse
    return out


def _lr_scheduler(opt: torch.optim.Optimizer, config: SupervisedTrainConfig):
    """The learning-rate schedule of ``config`` (stepped once per optimiser step)."""
    if config.lr_schedule == "cosine":
        total = max(1, config.iterations)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total)))
    milestone = max(1, int(round(config.lr_decay_at * config.iterations)))
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[milestone], gamma=config.lr_decay_factor)


def _train_test(n: int, config: SupervisedTrainConfig, train_indices, test_indices) -> tuple[np.ndarray, np.ndarray]:
    """The training and test positions: the given ones, or a seeded ``test_fraction`` split
    (``ValueError`` without training particles)."""
    if train_indices is None:
        train_idx, test_idx = split_train_test(n, config.test_fraction, seed=config.seed)
    else:
        train_idx = np.asarray(train_indices, dtype=np.int64)
        test_idx = np.zeros(0, dtype=np.int64) if test_indices is None else np.asarray(test_indices, dtype=np.int64)
    if train_idx.size < 1:
        raise ValueError("no training particles")
    return train_idx, test_idx


def _batch_losses(model: OrientationRegressor, images, bidx: np.ndarray, rot: torch.Tensor, q_all: torch.Tensor, *,
                  config: SupervisedTrainConfig, group_quaternions, reproj, aug_generator, device):
    """``(loss, ℓ_qd, ℓ_reproj)`` of the batch ``bidx`` (after the in-plane augmentation, if on):
    ``loss = w ℓ_qd + (1 − w) ℓ_reproj``, each averaged over the batch."""
    x = _read(images, bidx).to(device)
    t = torch.as_tensor(bidx)
    r_gt = rot[t].to(device)
    if config.augment_inplane != "none":
        x, r_gt = augment_inplane(x, r_gt, config.augment_inplane, generator=aug_generator)
        q_gt = rotmat_to_quaternion(r_gt.double()).float()
    else:
        q_gt = q_all[t].to(device)
    raw = model(x)
    q_pred = model.to_quaternion(raw)
    l_qd = (symmetric_quaternion_distance_loss(q_pred, q_gt, group_quaternions) if group_quaternions is not None
            else quaternion_distance_loss(q_pred, q_gt)).mean()
    l_rp = reproj(model.to_rotmat(raw), r_gt).mean() if reproj is not None else torch.zeros((), device=device)
    return config.w * l_qd + (1.0 - config.w) * l_rp, l_qd, l_rp


def _new_model(model_config: SupervisedModelConfig, config: SupervisedTrainConfig, device):
    """A seeded new regressor on ``device`` (channels-last), its Adam optimiser and its schedule."""
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the global state left alone
        torch.manual_seed(config.seed)
        model = OrientationRegressor(model_config)
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return model, opt, _lr_scheduler(opt, config)


def train_supervised(images, rotmats, reference_volume, *, model_config: SupervisedModelConfig,
                     config: SupervisedTrainConfig = SupervisedTrainConfig(),
                     train_indices=None, test_indices=None,
                     progress: Callable[[int, dict], None] | None = None, device=None) -> TrainResult:
    """Train the orientation regressor on labelled particles.

    Args:
        images: ``N`` particle images (tensor ``(N, n, n)`` or indexable lazy source), box
            ``model_config.box_size``.
        rotmats: ``(N, 3, 3)`` label rotations (RELION matrices, e.g. ground truth or
            ``cryopose search`` poses).
        reference_volume: ``(n', n', n')`` reference map for ``ℓ_reproj`` (and the test RMSE),
            same field of view as the images.
        model_config: Architecture.
        config: Training options.
        train_indices, test_indices: Explicit split (default: random ``test_fraction`` split).
        progress: Called as ``progress(step, record)`` every 50 steps and at the end.
        device: Torch device (default CPU).

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: Shape mismatches, or fewer training particles than one.
    """
    t0 = time.perf_counter()
    rot = torch.as_tensor(rotmats).float()
    n = len(images)
    if rot.shape != (n, 3, 3):
        raise ValueError(f"{n} images but rotmats of shape {tuple(rot.shape)}")
    train_idx, test_idx = _train_test(n, config, train_indices, test_indices)
    device = torch.device(device or "cpu")
    model, opt, sched = _new_model(model_config, config, device)
    reproj = ReprojectionLoss(reference_volume, box_size=config.reproj_box_size or model_config.box_size,
                              seed=config.seed, device=device) if config.w < 1.0 else None
    gq = _group_quaternions(config.symmetry).to(device) if config.qd_symmetry_aware else None
    q_all = rotmat_to_quaternion(rot.double()).float()
    rng = np.random.default_rng(config.seed)
    aug_gen = torch.Generator().manual_seed(config.seed + 7)
    hist = {"step": [], "loss": [], "loss_qd": [], "loss_reproj": [], "lr": [], "evaluations": []}
    order = rng.permutation(train_idx)
    pos = 0
    pending: list[torch.Tensor] = []  # per-step (loss, loss_qd, loss_reproj) not yet in hist
    model.train()
    for step in range(1, config.iterations + 1):
        if pos + config.batch_size > order.size:
            order, pos = rng.permutation(train_idx), 0
        bidx = np.sort(order[pos:pos + config.batch_size])
        pos += config.batch_size
        loss, l_qd, l_rp = _batch_losses(model, images, bidx, rot, q_all, config=config, group_quaternions=gq,
                                         reproj=reproj, aug_generator=aug_gen, device=device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist["step"].append(step)
        hist["lr"].append(opt.param_groups[0]["lr"])
        # the losses are read back every 50 steps, not every step: on a GPU each read is a sync
        pending.append(torch.stack([loss.detach(), l_qd.detach(), l_rp.detach()]))
        if step % 50 == 0 or step == config.iterations:
            for rec in torch.stack(pending).cpu().tolist():
                for key, value in zip(("loss", "loss_qd", "loss_reproj"), rec):
                    hist[key].append(value)
            pending = []
        if config.eval_every and step % config.eval_every == 0 and test_idx.size:
            ev = evaluate_model(model, images, rot, test_idx[:config.eval_max_particles], symmetry=config.symmetry)
            ev["step"] = step
            hist["evaluations"].append(ev)
            model.train()
        if progress is not None and (step % 50 == 0 or step == config.iterations):
            progress(step, {"loss": hist["loss"][-1], "loss_qd": hist["loss_qd"][-1], "loss_reproj": hist["loss_reproj"][-1]})
    model.eval()
    test_metrics = evaluate_model(model, images, rot, test_idx[:config.eval_max_particles], symmetry=config.symmetry,
                                  reference_volume=reference_volume,
                                  reproj_box_size=config.reproj_box_size or model_config.box_size) if test_idx.size else {}
    return TrainResult(model, hist, test_metrics, train_idx, test_idx, time.perf_counter() - t0)


def cross_validate_w(images, rotmats, reference_volume, *, model_config: SupervisedModelConfig,
                     config: SupervisedTrainConfig = SupervisedTrainConfig(), indices=None,
                     w_values=DEFAULT_W_GRID, n_folds: int = 5, criterion: str = "median_error_deg",
                     progress: Callable[[str], None] | None = None, device=None) -> CVResult:
    """Choose ``w`` by ``n_folds``-fold cross-validation (Lian et al. 2022).

    Args:
        images, rotmats, reference_volume, model_config: As :func:`train_supervised`.
        config: Training options of every fold (its ``w`` is replaced by each grid value).
        indices: Particles to cross-validate on (default all; pass the training split so the
            test split stays unseen).
        w_values: Grid of ``w`` (default 0.0 … 1.0 step 0.1).
        n_folds: Number of folds (>= 2).
        criterion: ``"median_error_deg"`` (geodesic modulo symmetry, default),
            ``"mean_error_deg"`` or ``"reprojection_rmse"``; lower is better.
        progress: Called with a one-line message after every fold.
        device: Torch device.

    Returns:
        :class:`CVResult`.

    Raises:
        ValueError: Fewer particles than folds, ``n_folds < 2``, unknown criterion, empty grid.
    """
    if criterion not in ("median_error_deg", "mean_error_deg", "reprojection_rmse"):
        raise ValueError(f"unknown CV criterion {criterion!r}")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    ws = [float(w) for w in w_values]
    if not ws:
        raise ValueError("empty grid of w values")
    idx = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size < n_folds:
        raise ValueError(f"{idx.size} particles cannot make {n_folds} folds")
    t0 = time.perf_counter()
    folds = np.array_split(np.random.default_rng(config.seed + 1).permutation(idx), n_folds)
    scores = np.zeros((len(ws), n_folds))
    for i, w in enumerate(ws):
        cfg = dataclasses.replace(config, w=w)
        for k in range(n_folds):
            held = np.sort(folds[k])
            train = np.sort(np.concatenate([folds[j] for j in range(n_folds) if j != k]))
            res = train_supervised(images, rotmats, reference_volume, model_config=model_config, config=cfg,
                                   train_indices=train, test_indices=held, device=device)
            scores[i, k] = res.test_metrics[criterion] if criterion in res.test_metrics else math.nan
            if progress is not None:
                progress(f"w={w:.1f} fold {k + 1}/{n_folds}: {criterion} {scores[i, k]:.4g}")
    mean = np.nanmean(scores, axis=1)
    best = ws[int(np.nanargmin(mean))]
    return CVResult(best, ws, criterion, scores, mean, time.perf_counter() - t0)


def save_checkpoint(path, model: OrientationRegressor, *, train_config: SupervisedTrainConfig | None = None,
                    pixel_size_angstrom: float | None = None, symmetry: str = "C1", extra: dict | None = None,
                    invert_contrast: bool | None = None) -> Path:
    """Write a checkpoint that :func:`cryopose.models.supervised.load_pose_model` reads.

    Contents: ``format`` (:data:`~cryopose.training.checkpoint.SUPERVISED_FORMAT`),
    ``model_kind: "supervised"``, ``model_config`` (dict), ``state_dict``, ``train_config``
    (dict), ``pixel_size_angstrom``, ``symmetry``, ``cryopose_version`` and ``extra``, all plain
    values (:func:`cryopose.training.checkpoint.save_checkpoint`: NumPy values in ``extra`` become
    Python numbers or tensors), so the file loads with ``weights_only=True``. Written to a
    temporary file and renamed (atomic).

    Args:
        path: Output ``.pt`` path.
        model: The trained regressor (weights copied to the CPU).
        train_config: Its training options, or ``None``.
        pixel_size_angstrom: Pixel size in Å of the network's *input* grid, i.e. of
            ``model.config.box_size`` px images, so that ``box_size × pixel_size_angstrom`` is
            the field of view (the box in Å) the particles must have; when the network's input
            is Fourier-cropped from a working grid of ``m`` px at ``a`` Å, this is
            ``a · m / model.config.box_size``, not ``a``. ``None`` when unknown (then
            ``cryopose predict`` cannot check the particles' box in Å).
        symmetry: Point group of the training reference (stored canonical).
        extra: Further JSON-like entries, stored as ``extra`` (copied, not modified).
        invert_contrast: Whether the training images were negated (dark particles);
            stored as ``extra["invert_contrast"]`` (a bool) when given, which
            :func:`cryopose.pipelines.predict.predict_poses_supervised` then applies by
            default. ``None`` leaves ``extra`` as it is.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``extra`` holds a value that is not plain (see
            :func:`cryopose.training.checkpoint.to_plain`).
    """
    from .checkpoint import SUPERVISED_FORMAT
    from .checkpoint import save_checkpoint as save_plain

    path = Path(path)
    extra_doc = dict(extra or {})
    if invert_contrast is not None:
        extra_doc["invert_contrast"] = bool(invert_contrast)
    doc = {
        "model_kind": MODEL_KIND,
        "model_config": dataclasses.asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_config": dataclasses.asdict(train_config) if train_config is not None else None,
        "pixel_size_angstrom": None if pixel_size_angstrom is None else float(pixel_size_angstrom),
        "symmetry": canonical_symbol(symmetry),
        "cryopose_version": __version__,
        "extra": extra_doc,
    }
    return save_plain(path, doc, format=SUPERVISED_FORMAT)
