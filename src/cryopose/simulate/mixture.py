"""Heterogeneous data sets: discrete mixtures of several maps and continuous morphs between two.

A **discrete mixture** of ``K`` structures ``V_1 … V_K`` (one frame: the same box and pixel
size) gives every particle one class ``c_i`` drawn with the given class fractions ``f_k``; its
image is made from ``V_{c_i}``. The class counts are exact: ``round(f_k N)`` by the largest
remainder (so 50/30/20 of 2,000 particles is 1,000/600/400), in a random order drawn from the
generator.

A **continuous morph** between two structures ``A`` and ``B`` draws a morph parameter
``t_i ~ U(0, 1)`` per particle; its structure is ``(1 − t_i) A + t_i B``.

Both are described by a per-particle weight matrix ``W`` of shape ``(N, K)`` (one-hot rows for
a mixture, ``(1 − t, t)`` for a morph): the particle's structure is ``Σ_k W_ik V_k``. Because
the Fourier-slice projection (trilinear interpolation of the padded, gridding-corrected
transform), the shift and the CTF are all linear in the volume, the image of that structure
equals ``Σ_k W_ik · image(V_k)`` exactly; :class:`MixtureRenderer` renders it that way
without building a volume per particle.

The truth goes into the STAR file as ``rlnCryoposeTrueClass`` (1-based class of the mixture;
0 for junk not drawn from the structures: ``noise``, ``blob``, ``other``) and
``rlnCryoposeTrueMorph`` (``t``); ``rlnClassNumber`` is left free for estimates
(:mod:`cryopose.simulate.simulator`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

__all__ = ["MixtureSpec", "parse_class_fractions", "exact_class_counts", "sample_mixture_weights",
           "check_same_grid", "load_volumes", "MixtureRenderer", "TRUE_CLASS_COLUMN", "TRUE_MORPH_COLUMN"]

#: STAR column of the true class (1-based; 0 = junk not drawn from the structures).
TRUE_CLASS_COLUMN = "rlnCryoposeTrueClass"
#: STAR column of the true morph parameter ``t`` in [0, 1].
TRUE_MORPH_COLUMN = "rlnCryoposeTrueMorph"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixtureSpec:
    """How the particles are spread over several structures.

    Attributes:
        class_fractions: Fractions ``f_k`` of a discrete mixture (positive, summing to 1 within
            1e-3; normalised to sum 1), or ``None`` for a morph.
        morph: A continuous morph between two structures (``t ~ U(0, 1)``).

    Raises:
        UserError: Neither or both of ``class_fractions`` and ``morph``, a fraction that is not
            positive, fractions that do not sum to 1, or fewer than two classes.
    """

    class_fractions: tuple[float, ...] | None = None
    morph: bool = False

    def __post_init__(self):
        if (self.class_fractions is None) == (not self.morph):
            raise UserError("a mixture is either discrete (class fractions) or a morph, not both or neither")
        if self.class_fractions is not None:
            f = tuple(float(v) for v in self.class_fractions)
            if len(f) < 2:
                raise UserError(f"a mixture needs at least two classes, got {len(f)} fraction(s)")
            if not all(math.isfinite(v) and v > 0 for v in f):
                raise UserError(f"class fractions must be positive, got {', '.join(f'{v:g}' for v in f)}")
            if abs(sum(f) - 1.0) > 1e-3:
                raise UserError(f"class fractions must sum to 1, got {sum(f):g} ({', '.join(f'{v:g}' for v in f)})")
            object.__setattr__(self, "class_fractions", tuple(v / sum(f) for v in f))

    @property
    def n_structures(self) -> int:
        """Number of structures the mixture needs (``K``, or 2 for a morph)."""
        return 2 if self.morph else len(self.class_fractions)


def parse_class_fractions(text: str) -> tuple[float, ...]:
    """``"0.5,0.3,0.2"`` → ``(0.5, 0.3, 0.2)``.

    Raises:
        UserError: A value that is not a number (named).
    """
    out = []
    for part in str(text).split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise UserError(f"--class-fractions: {part.strip()!r} is not a number (give e.g. 0.5,0.3,0.2)") from None
    return tuple(out)


def exact_class_counts(n_particles: int, fractions: Sequence[float]) -> np.ndarray:
    """Class sizes ``round(f_k N)`` by the largest remainder, summing to ``N``.

    Returns:
        ``(K,)`` int64 counts.
    """
    f = np.asarray(fractions, dtype=np.float64)
    raw = f / f.sum() * int(n_particles)
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: int(n_particles) - int(counts.sum())]] += 1
    return counts


def sample_mixture_weights(n_particles: int, spec: MixtureSpec, *,
                           generator: torch.Generator) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Draw the per-particle structure weights of a mixture or a morph.

    Args:
        n_particles: ``N``.
        spec: :class:`MixtureSpec`.
        generator: CPU generator (one permutation for a mixture, ``N`` uniforms for a morph).

    Returns:
        ``(weights, classes, morph)``: float64 ``(N, K)`` weights, the 0-based class per
        particle ``(N,)`` int64 (``None`` for a morph) and ``t`` ``(N,)`` float64 (``None``
        for a mixture).
    """
    n = int(n_particles)
    if spec.morph:
        t = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
        return np.stack([1.0 - t, t], axis=1), None, t
    counts = exact_class_counts(n, spec.class_fractions)
    labels = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    labels = labels[torch.randperm(n, generator=generator).numpy()]
    weights = np.zeros((n, len(counts)), dtype=np.float64)
    weights[np.arange(n), labels] = 1.0
    return weights, labels, None


def check_same_grid(paths: Sequence[str | os.PathLike], *, pixel_size_angstrom: float | None = None) -> None:
    """Check that every MRC map among ``paths`` has the same box and pixel size.

    Atomic models are skipped (they are put on the first structure's grid).

    Args:
        paths: Structure files.
        pixel_size_angstrom: Voxel size overriding every header (``--map-pixel-size``).

    Raises:
        UserError: Two maps that differ in box or pixel size (both files named).
        InputFileError: An unreadable map.
    """
    from ..io.mrc import read_map
    from .volumes import MAP_SUFFIXES, _suffix

    first = None
    for p in paths:
        if _suffix(Path(p)) not in MAP_SUFFIXES:
            continue
        data = read_map(p, pixel_size_angstrom=pixel_size_angstrom, require_cubic=True)
        grid = (data.volume.shape[-1], round(float(data.pixel_size_angstrom), 4))
        if first is None:
            first = (p, grid)
        elif grid != first[1]:
            raise UserError(f"mixture maps must share one frame: {first[0]} is {first[1][0]} px at "
                            f"{first[1][1]:g} Å, {p} is {grid[0]} px at {grid[1]:g} Å (resample one onto the other)")


def load_volumes(paths: Sequence[str | os.PathLike], **load_options):
    """Load the structures of a mixture on one grid.

    The maps' own grids are checked first (:func:`check_same_grid`); the first structure is
    loaded with ``load_options`` (those of :func:`cryopose.simulate.load_volume`), the others
    onto its box and pixel size.

    Returns:
        list of :class:`~cryopose.io.mrc.MapData`, all ``(n, n, n)`` at one pixel size.

    Raises:
        UserError, InputFileError, PixelSizeError: As :func:`check_same_grid` and
            :func:`~cryopose.simulate.load_volume`.
    """
    from .volumes import load_volume

    check_same_grid(paths, pixel_size_angstrom=load_options.get("input_pixel_size_angstrom"))
    first = load_volume(paths[0], **load_options)
    rest_options = dict(load_options, box_size=first.volume.shape[-1], pixel_size_angstrom=first.pixel_size_angstrom)
    return [first] + [load_volume(p, **rest_options) for p in paths[1:]]


class MixtureRenderer:
    """Renders particles whose structure is a weighted sum of several volumes.

    ``image_i = Σ_k W_ik · render_k(pose_i)`` with one
    :class:`~cryopose.simulate.render.SliceRenderer` per volume; only the non-zero weights are
    rendered (one volume per particle for a discrete mixture). Exact because projection, shift
    and CTF are linear in the volume (module docstring).

    Args:
        renderers: One renderer per structure (same box).
        weights: float ``(N, K)`` weights of all ``N`` particles.
    """

    def __init__(self, renderers: Sequence, weights: np.ndarray):
        self.renderers = list(renderers)
        self.weights = np.asarray(weights, dtype=np.float64)
        if self.weights.ndim != 2 or self.weights.shape[1] != len(self.renderers):
            raise ValueError(f"weights must be (N, {len(self.renderers)}), got {self.weights.shape}")
        self.n = self.renderers[0].n

    def render(self, index: np.ndarray, rotmats: torch.Tensor, *, shifts_px: torch.Tensor | None = None,
               ctf=None, pixel_size_angstrom: float | None = None) -> torch.Tensor:
        """float32 ``(B, n, n)`` images of particles ``index`` (absolute, ``(B,)``) at the given poses.

        Arguments after ``index`` as :meth:`cryopose.simulate.render.SliceRenderer.render`.
        """
        w = self.weights[np.asarray(index)]
        out = torch.zeros(len(w), self.n, self.n, dtype=torch.float32)
        for k, renderer in enumerate(self.renderers):
            rows = np.flatnonzero(w[:, k] != 0)
            if rows.size == 0:
                continue
            r = torch.from_numpy(rows)
            img = renderer.render(rotmats[r], shifts_px=None if shifts_px is None else shifts_px[r],
                                  ctf=None if ctf is None else ctf[r], pixel_size_angstrom=pixel_size_angstrom)
            out[r] += torch.from_numpy(w[rows, k].astype(np.float32))[:, None, None] * img
        return out
