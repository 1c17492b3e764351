"""Pose errors between an estimated and a reference pose set, up to a global rotation, the
hand, and point-group symmetry.

Why a global alignment is needed (conventions of :mod:`cryopose.conventions`, projector
``image(x, y) = ∫ V(Rᵀ (x, y, z)ᵀ) dz``):

* **Global rotation.** A map rotated as ``V'(x) = V(Gᵀ x)`` produces the same images with
  poses ``R' = R Gᵀ``: ``∫ V'(R'ᵀ p) dz = ∫ V(Gᵀ G Rᵀ p) dz``. A reconstruction from scratch is
  determined only up to such a ``G``.
* **Hand.** The mirrored map ``V'(x) = V(J x)``, ``J = diag(1, 1, −1)``, produces the same
  images with ``R' = J R J``: ``∫ V(J J Rᵀ J p) dz = ∫ V(Rᵀ (x, y, −z)) dz``, the same
  integral. Projections cannot tell the hands apart.
* **Symmetry.** If ``V(S x) = V(x)`` for every ``S`` of the point group, ``R`` and ``R S``
  give the same images (see :mod:`cryopose.symmetry`).

Model fitted by :func:`align_rotations` (``m = 1`` for the mirrored hand, else 0)::

    J^m R_est,i J^m  ≈  R_ref,i S_i Gᵀ          S_i in the point group, chosen per particle

i.e. the estimated map relates to the reference map as ``V_est(x) = V_ref(Gᵀ J^m x)``;
resampling the estimated map as ``V_ref(y) = V_est(J^m G y)`` superimposes it on the reference.
The error of particle ``i`` is the geodesic distance
``min_S d(J^m R_est,i J^m G, R_ref,i S)`` in degrees.

In-plane shifts are not affected by ``G``, the mirror or ``S`` (the images are identical), so
shift errors compare ``shifts_angstrom`` directly. A translation of the estimated map's origin
relative to the reference (which would shift particles by ``(R t)_xy``) is not fitted.

This module imports no training code, so any pair of STAR files can be evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
import torch

from ..errors import UserError
from ..rotations import as_tensor, geodesic_distance_deg, project_to_rotmat, rotmat_to_relion_euler
from ..symmetry import canonical_symbol, symmetry_operators

__all__ = [
    "MIRROR",
    "AlignmentResult",
    "ShiftErrorResult",
    "ParticleMatchError",
    "align_rotations",
    "symmetry_aware_errors",
    "shift_error_angstrom",
    "evaluate_poses",
]

#: ``J = diag(1, 1, −1)``: the mirror that maps poses of one hand to the other (``R' = J R J``).
MIRROR = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))

_CHUNK_ELEMENTS = 1 << 22  # (particles × operators) per chunk


class ParticleMatchError(UserError, ValueError):
    """Estimated and reference particles cannot be matched (different counts or names)."""


@dataclass(frozen=True)
class AlignmentResult:
    """Result of :func:`align_rotations`.

    Attributes:
        global_rotation: ``(3, 3)`` rotation ``G`` with ``J^m R_est J^m ≈ R_ref S Gᵀ``.
        mirrored: Whether the estimated poses are of the other hand (``m = 1``).
        hand: ``"same"`` or ``"mirror"``.
        aligned_est: ``(N, 3, 3)`` estimated poses brought into the reference frame,
            ``J^m R_est,i J^m G S_iᵀ`` (the symmetry copy nearest ``R_ref,i``).
        errors_deg: ``(N,)`` geodesic errors in degrees, ``d(aligned_est_i, R_ref,i)``, modulo
            the point group.
        mean_error_deg: Mean of ``errors_deg``.
        median_error_deg: Median of ``errors_deg``.
        symmetry: Point-group symbol used (upper case).
        symmetry_indices: ``(N,)`` index ``g`` of ``S_i = symmetry_operators(symmetry)[g]``.
        other_hand_median_error_deg: Median error of the best alignment with the other hand
            (``None`` when ``allow_mirror=False``); close to ``median_error_deg`` means the hand
            is undetermined.
    """

    global_rotation: torch.Tensor
    mirrored: bool
    hand: str
    aligned_est: torch.Tensor
    errors_deg: torch.Tensor
    mean_error_deg: float
    median_error_deg: float
    symmetry: str
    symmetry_indices: torch.Tensor
    other_hand_median_error_deg: float | None = None


@dataclass(frozen=True)
class ShiftErrorResult:
    """Result of :func:`shift_error_angstrom`.

    Attributes:
        errors_angstrom: ``(N,)`` Euclidean in-plane shift errors in Å.
        mean_error_angstrom: Their mean in Å.
        median_error_angstrom: Their median in Å.
    """

    errors_angstrom: torch.Tensor
    mean_error_angstrom: float
    median_error_angstrom: float


def _as_rotmats(x, name: str) -> torch.Tensor:
    r = as_tensor(x).to(torch.float64)
    if r.ndim != 3 or r.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must have shape (N, 3, 3), got {tuple(r.shape)}")
    return r


def _median(x: torch.Tensor) -> float:
    return float(np.median(x.detach().cpu().numpy())) if x.numel() else float("nan")


def _best_operator(m: torch.Tensor, g: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Index of ``S`` maximising ``tr(Gᵀ M_i S) = <M_i, G Sᵀ>`` for each ``M_i`` (N, 3, 3)."""
    h = (g @ ops.transpose(-1, -2)).reshape(-1, 9)  # (P, 9)
    chunk = max(1, _CHUNK_ELEMENTS // ops.shape[0])
    out = [(m[s:s + chunk].reshape(-1, 9) @ h.T).argmax(dim=-1) for s in range(0, m.shape[0], chunk)]
    return torch.cat(out)


def _errors(est_h: torch.Tensor, ref: torch.Tensor, m: torch.Tensor, g: torch.Tensor, ops: torch.Tensor):
    idx = _best_operator(m, g, ops)
    aligned = est_h @ g @ ops[idx].transpose(-1, -2)
    return geodesic_distance_deg(aligned, ref), idx, aligned


def _candidate_scores(m_score: torch.Tensor, cands: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Median (over the scoring particles) of the symmetry-reduced error for each candidate G."""
    h = (cands[:, None] @ ops.transpose(-1, -2)[None]).reshape(-1, 9)  # (K * P, 9)
    n_ops = ops.shape[0]
    mf = m_score.reshape(-1, 9)
    block = max(1, _CHUNK_ELEMENTS // (mf.shape[0] * n_ops))
    scores = []
    for s in range(0, cands.shape[0], block):
        hb = h[s * n_ops:(s + block) * n_ops]
        tr = (mf @ hb.T).reshape(mf.shape[0], -1, n_ops).amax(dim=-1)  # (M, k)
        ang = torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1.0, 1.0)))
        scores.append(ang.median(dim=0).values)
    return torch.cat(scores)


def _align_one_hand(est_h, ref, ops, *, n_candidates, n_score, generator, inlier_threshold_deg, max_iter):
    n = est_h.shape[0]
    m = est_h.transpose(-1, -2) @ ref  # M_i = est_hᵀ R_ref: G with est_h G = R_ref
    cand_idx = torch.randperm(n, generator=generator)[: min(n, n_candidates)]
    score_idx = torch.randperm(n, generator=generator)[: min(n, n_score)]
    scores = _candidate_scores(m[score_idx], m[cand_idx], ops)
    g = m[cand_idx[int(torch.argmin(scores))]]
    for _ in range(max_iter):
        err, idx, _ = _errors(est_h, ref, m, g, ops)
        thr = inlier_threshold_deg if inlier_threshold_deg is not None else max(3.0 * _median(err), 1.0)
        inl = err <= thr
        if not bool(inl.any()):
            break
        g_new = project_to_rotmat((m[inl] @ ops[idx[inl]]).sum(0))
        step = float(geodesic_distance_deg(g, g_new))
        g = g_new
        if step < 1e-10:
            break
    err, idx, aligned = _errors(est_h, ref, m, g, ops)
    return g, err, idx, aligned


def _matched_pair(rot_est, rot_ref) -> tuple[torch.Tensor, torch.Tensor]:
    """Both pose sets as float64 ``(N, 3, 3)`` of one shape with ``N >= 1`` (else ``ValueError``)."""
    est = _as_rotmats(rot_est, "rot_est")
    ref = _as_rotmats(rot_ref, "rot_ref")
    if est.shape != ref.shape:
        raise ValueError(f"rot_est {tuple(est.shape)} and rot_ref {tuple(ref.shape)} differ in shape")
    if est.shape[0] == 0:
        raise ValueError("align_rotations needs at least one particle")
    return est, ref


def align_rotations(
    rot_est,
    rot_ref,
    *,
    symmetry: str = "C1",
    allow_mirror: bool = True,
    seed: int = 0,
    n_candidates: int = 256,
    n_score: int = 2048,
    inlier_threshold_deg: float | None = None,
    max_iter: int = 50,
) -> AlignmentResult:
    """Find the global rotation (and hand) that best maps estimated poses onto reference poses.

    Model: ``J^m R_est,i J^m ≈ R_ref,i S_i Gᵀ`` (derivation in the module docstring). For each
    hand (``m = 0``, and ``m = 1`` if ``allow_mirror``):

    1. *Candidates* — each of up to ``n_candidates`` randomly chosen particles gives the ``G``
       that aligns it exactly, ``G_k = (J^m R_est,k J^m)ᵀ R_ref,k``. (Candidates differing by
       a group element, ``G S``, score identically, so one per particle suffices.)
    2. *Robust scoring* — each candidate is scored by the median, over up to ``n_score``
       random particles, of the symmetry-reduced geodesic error; the best is kept. With fewer
       than half outliers, an outlier-free candidate wins.
    3. *Refinement* — iterate: choose ``S_i`` per particle (largest ``tr``), keep inliers with
       error ``<= inlier_threshold_deg`` (default ``max(3 × median, 1°)``), and set ``G`` to
       the chordal L2 mean ``argmin Σ ‖J^m R_est,i J^m G − R_ref,i S_i‖²_F =
       proj_SO(3)(Σ (J^m R_est,i J^m)ᵀ R_ref,i S_i)`` (SVD), until ``G`` moves < 1e-10°.

    The hand with the smaller median error wins (ties go to ``"same"``). Deterministic for a
    given ``seed``. Cost ``O(N · |group|)`` plus ``O(n_candidates · n_score · |group|)``.

    Args:
        rot_est: ``(N, 3, 3)`` estimated poses (cryopose convention).
        rot_ref: ``(N, 3, 3)`` reference (e.g. ground-truth) poses, matched by index.
        symmetry: Point group of the map (see :func:`cryopose.symmetry.symmetry_operators`).
        allow_mirror: Also try the other hand.
        seed: Seed for the choice of candidate and scoring particles.
        n_candidates: Number of single-particle candidates for ``G``.
        n_score: Number of particles used to score candidates.
        inlier_threshold_deg: Fixed inlier threshold in degrees for the refinement.
        max_iter: Maximum refinement iterations.

    Returns:
        :class:`AlignmentResult` (float64 tensors).

    Raises:
        ValueError: If shapes differ or are not ``(N, 3, 3)`` with ``N >= 1``.
        cryopose.symmetry.SymmetryError: For an unknown symmetry symbol.
    """
    est, ref = _matched_pair(rot_est, rot_ref)
    sym = canonical_symbol(symmetry)
    ops = symmetry_operators(sym, dtype=torch.float64, device=est.device)
    jm = MIRROR.to(est.device)
    results = {}
    for mirrored in (False, True) if allow_mirror else (False,):
        est_h = jm @ est @ jm if mirrored else est
        gen = torch.Generator().manual_seed(int(seed))
        results[mirrored] = _align_one_hand(
            est_h, ref, ops, n_candidates=n_candidates, n_score=n_score, generator=gen,
            inlier_threshold_deg=inlier_threshold_deg, max_iter=max_iter,
        )
    medians = {k: _median(v[1]) for k, v in results.items()}
    mirrored = bool(allow_mirror and medians[True] < medians[False])
    g, err, idx, aligned = results[mirrored]
    return AlignmentResult(
        global_rotation=g,
        mirrored=mirrored,
        hand="mirror" if mirrored else "same",
        aligned_est=aligned,
        errors_deg=err,
        mean_error_deg=float(err.mean()),
        median_error_deg=medians[mirrored],
        symmetry=sym,
        symmetry_indices=idx,
        other_hand_median_error_deg=medians[not mirrored] if allow_mirror else None,
    )


def symmetry_aware_errors(rot_est, rot_ref, *, symmetry: str = "C1") -> torch.Tensor:
    """Geodesic errors ``min_S d(R_est,i, R_ref,i S)`` in degrees, without global alignment.

    Use when both pose sets share a frame (e.g. simulated data refined against the true map).

    Args:
        rot_est, rot_ref: ``(N, 3, 3)`` poses.
        symmetry: Point-group symbol.

    Returns:
        ``(N,)`` errors in degrees, in [0, 180].

    Raises:
        ValueError: On shape mismatch.
        cryopose.symmetry.SymmetryError: For an unknown symbol.
    """
    est = _as_rotmats(rot_est, "rot_est")
    ref = _as_rotmats(rot_ref, "rot_ref")
    if est.shape != ref.shape:
        raise ValueError(f"rot_est {tuple(est.shape)} and rot_ref {tuple(ref.shape)} differ in shape")
    ops = symmetry_operators(symmetry, dtype=torch.float64, device=est.device)
    eye = torch.eye(3, dtype=torch.float64, device=est.device)
    return _errors(est, ref, est.transpose(-1, -2) @ ref, eye, ops)[0]


def shift_error_angstrom(shifts_est, shifts_ref) -> ShiftErrorResult:
    """Euclidean error between estimated and reference in-plane shifts, in Å.

    Shifts live in the image plane and are unchanged by a global rotation of the map, by the
    mirror and by symmetry operators (the images are identical), so they are compared
    directly. A 3D offset between the two maps' origins is not corrected for.

    Args:
        shifts_est: ``(N, 2)`` ``(x, y)`` shifts in Å (``rlnOriginXAngst/YAngst`` sign).
        shifts_ref: ``(N, 2)`` reference shifts in Å.

    Returns:
        :class:`ShiftErrorResult` with per-particle errors, mean and median in Å.

    Raises:
        ValueError: If the shapes differ or are not ``(N, 2)``.
    """
    a = as_tensor(shifts_est).to(torch.float64)
    b = as_tensor(shifts_ref).to(torch.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[-1] != 2:
        raise ValueError(f"shifts must both be (N, 2); got {tuple(a.shape)} and {tuple(b.shape)}")
    err = (a - b).norm(dim=-1)
    mean = float(err.mean()) if err.numel() else float("nan")
    return ShiftErrorResult(errors_angstrom=err, mean_error_angstrom=mean, median_error_angstrom=_median(err))


def _image_names(meta) -> list[str] | None:
    table = getattr(meta, "table", None)
    if table is None or "rlnImageName" not in getattr(table, "columns", ()):
        return None
    return [str(v).strip() for v in table["rlnImageName"]]


def _normalised_name(name: str) -> str:
    """``"000012@path/to/stack.mrcs"`` → ``"12@stack.mrcs"`` (index as integer, file basename)."""
    if "@" in name:
        idx, path = name.split("@", 1)
        try:
            idx = str(int(idx))
        except ValueError:
            pass
        return f"{idx}@{PurePath(path).name}"
    return PurePath(name).name


def _match_indices(est_names: list[str], ref_names: list[str]) -> np.ndarray | None:
    """Permutation ``p`` with ``est_names[p[i]] == ref_names[i]``, or None when impossible."""
    for key in (lambda s: s, _normalised_name):
        e = [key(s) for s in est_names]
        r = [key(s) for s in ref_names]
        pos = {name: i for i, name in enumerate(e)}
        if len(pos) != len(e) or len(set(r)) != len(r):
            continue  # duplicated names: this key cannot match
        if set(pos) == set(r):
            return np.array([pos[name] for name in r], dtype=np.int64)
    return None


def evaluate_poses(est, ref, *, symmetry: str = "C1", allow_mirror: bool = True, seed: int = 0) -> dict:
    """Pose and shift errors of an estimated particle set against a reference.

    Particles are matched by order, unless both ``table``\\ s have ``rlnImageName`` and the
    names differ, in which case they are matched by name (exactly, or else by image index and
    stack basename, ``"12@stack.mrcs"``). Rotations are aligned with :func:`align_rotations`
    (global rotation, hand, symmetry); shifts are compared with :func:`shift_error_angstrom`.

    Args:
        est: Estimated ``ParticleMetadata`` (uses ``rotmats`` (N, 3, 3), ``shifts_angstrom``
            (N, 2) and ``table``).
        ref: Reference ``ParticleMetadata``.
        symmetry: Point-group symbol of the map.
        allow_mirror: Also consider the other hand.
        seed: Seed of the alignment.

    Returns:
        JSON-serialisable dict: ``n_particles``, ``symmetry``, ``hand`` (``"same"``/
        ``"mirror"``), ``mean_error_deg``, ``median_error_deg``,
        ``other_hand_median_error_deg``, ``global_rotation_relion_euler_deg`` (``[rot, tilt,
        psi]`` of ``G``), ``mean_shift_error_angstrom``, ``median_shift_error_angstrom``
        (``None`` when either set lacks shifts), ``matched_by`` (``"order"`` or
        ``"rlnImageName"``).

    Raises:
        ParticleMatchError: If either set has no poses, the particle counts differ and names
            cannot match them, or the image-name sets differ.
        cryopose.symmetry.SymmetryError: For an unknown symmetry symbol.
    """
    for meta, role in ((est, "estimated"), (ref, "reference")):
        if getattr(meta, "rotmats", None) is None:
            raise ParticleMatchError(
                f"{getattr(meta, 'source', role)}: the {role} particles have no poses "
                "(rlnAngleRot/rlnAngleTilt/rlnAnglePsi)"
            )
    rot_est = _as_rotmats(est.rotmats, "est.rotmats")
    rot_ref = _as_rotmats(ref.rotmats, "ref.rotmats")
    sh_est = getattr(est, "shifts_angstrom", None)
    sh_ref = getattr(ref, "shifts_angstrom", None)
    est_names, ref_names = _image_names(est), _image_names(ref)
    matched_by = "order"
    if est_names is not None and ref_names is not None and est_names != ref_names:
        perm = _match_indices(est_names, ref_names)
        if perm is None:
            missing = sorted(set(map(_normalised_name, ref_names)) - set(map(_normalised_name, est_names)))
            extra = sorted(set(map(_normalised_name, est_names)) - set(map(_normalised_name, ref_names)))
            raise ParticleMatchError(
                f"cannot match particles by rlnImageName: {len(est_names)} estimated vs "
                f"{len(ref_names)} reference; {len(missing)} reference names missing from the "
                f"estimate (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]}), or names repeat"
            )
        p = torch.as_tensor(perm)
        rot_est = rot_est[p]
        if sh_est is not None:
            sh_est = as_tensor(sh_est)[p]
        matched_by = "rlnImageName"
    elif rot_est.shape[0] != rot_ref.shape[0]:
        raise ParticleMatchError(
            f"{rot_est.shape[0]} estimated vs {rot_ref.shape[0]} reference particles, and no "
            "rlnImageName in both tables to match them by"
        )
    aln = align_rotations(rot_est, rot_ref, symmetry=symmetry, allow_mirror=allow_mirror, seed=seed)
    if sh_est is not None and sh_ref is not None:
        sh = shift_error_angstrom(sh_est, sh_ref)
        mean_sh, med_sh = sh.mean_error_angstrom, sh.median_error_angstrom
    else:
        mean_sh = med_sh = None
    return {
        "n_particles": int(rot_ref.shape[0]),
        "symmetry": aln.symmetry,
        "hand": aln.hand,
        "mean_error_deg": aln.mean_error_deg,
        "median_error_deg": aln.median_error_deg,
        "other_hand_median_error_deg": aln.other_hand_median_error_deg,
        "global_rotation_relion_euler_deg": [float(v) for v in rotmat_to_relion_euler(aln.global_rotation)],
        "mean_shift_error_angstrom": mean_sh,
        "median_shift_error_angstrom": med_sh,
        "matched_by": matched_by,
    }
