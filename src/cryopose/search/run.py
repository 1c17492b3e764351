"""Search a particle data set against a reference map: grid matching, lazy resampling, output metadata.

:func:`search_particles` is what ``cryopose search`` calls. It puts particles and reference on
one working grid, runs :func:`cryopose.search.projection_matching.search_poses` over the
lazily read particles and returns the particles' metadata with the found poses.

Working grid (pixel sizes always from the data, never silently 1 Å): the particles' field of
view ``L = n_p · a_p`` is kept. With ``box_size`` given the particles are Fourier-cropped to it
(pixel ``L / box_size``); otherwise, if the reference's voxel is coarser than the particles'
pixel, the particles are Fourier-cropped to ``m = round(L / a_ref)`` pixels (e.g. the 320 px,
1.31 Å EMPIAR-10076 particles → 32 px at 13.1 Å for the 32³, 13.1 Å class maps); otherwise
the particle grid is kept. The reference is then resampled onto that grid
(:func:`cryopose.simulate.volumes.resample_volume`: crop/pad or Fourier crop/pad, exact). The
CTF is evaluated on the working grid, so downsampling needs no CTF change; shifts are
reported in Å and are independent of the grid.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..errors import UserError
from ..fourier import fourier_downsample_images
from ..io.mrc import MapData
from ..io.particles import ParticleMetadata
from ..simulate.volumes import resample_volume
from .projection_matching import SearchConfig, SearchResult, search_poses

__all__ = ["ResampledImages", "working_grid", "load_reference", "reference_scale_problem",
           "search_particles", "SCORE_COLUMN", "GLOBAL_SCORE_COLUMN"]

#: STAR column of the per-particle search score (NCC at the final pose).
SCORE_COLUMN = "rlnCryoposeSearchScore"
#: STAR column of the best NCC of the global (coarse) stage.
GLOBAL_SCORE_COLUMN = "rlnCryoposeSearchGlobalScore"


class ResampledImages:
    """Lazy view of an image source, Fourier-cropped to ``box_size`` and optionally negated.

    Args:
        source: Tensor ``(N, n, n)`` or object with ``len()`` and ``source[index_array]``.
        box_size: Output edge ``m <= n`` (Fourier crop, values keep their scale).
        invert_contrast: Multiply by −1 (dark particles → bright, as the search expects).
        centring_px: ``(N, 2)`` RELION origins in output pixels to centre the images by
            (Fourier shift after the crop; e.g. from
            :func:`cryopose.data.preprocess.centre_particles`), or ``None``.
    """

    def __init__(self, source, box_size: int, *, invert_contrast: bool = False,
                 centring_px: torch.Tensor | None = None):
        self.source = source
        self.box_size = int(box_size)
        self.invert_contrast = bool(invert_contrast)
        self.centring_px = None if centring_px is None else torch.as_tensor(centring_px).float()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(self.source, torch.Tensor):
            x = self.source[torch.as_tensor(np.asarray(index), dtype=torch.long)]
        else:
            x = torch.as_tensor(self.source[np.asarray(index, dtype=np.int64)])
        x = x.float()
        if x.shape[-1] != self.box_size:
            x = fourier_downsample_images(x, self.box_size)
        if self.centring_px is not None:
            from ..fourier import centered_fft2, centered_ifft2
            from ..projection import origin_phases

            sh = self.centring_px[torch.as_tensor(np.asarray(index), dtype=torch.long).reshape(-1)]
            x = centered_ifft2(centered_fft2(x) * origin_phases(sh, self.box_size).conj()).real.float()
        return -x if self.invert_contrast else x

    def iter_chunks(self, chunk_size: int):
        """Yield ``(indices, images)`` in order, ``chunk_size`` at a time (as ``ParticleStack``)."""
        for start in range(0, len(self), int(chunk_size)):
            idx = np.arange(start, min(start + int(chunk_size), len(self)), dtype=np.int64)
            yield idx, self[idx]

    def subset(self, indices) -> "ResampledImages":
        """The same view of a subset of the particles (positions in this source)."""
        idx = np.asarray(indices, dtype=np.int64)
        if isinstance(self.source, torch.Tensor):
            src = self.source[torch.as_tensor(idx)]
        else:
            src = self.source.subset(idx)
        centring = None if self.centring_px is None else self.centring_px[torch.as_tensor(idx)]
        return ResampledImages(src, self.box_size, invert_contrast=self.invert_contrast, centring_px=centring)


def working_grid(particle_box: int, particle_pixel: float, reference_pixel: float,
                 box_size: int | None = None) -> tuple[int, float]:
    """``(box, pixel_angstrom)`` of the grid the search runs on (see the module docstring).

    Raises:
        UserError: ``box_size`` larger than the particle box or < 8.
    """
    fov = particle_box * particle_pixel
    if box_size is not None:
        m = int(box_size)
        if m > particle_box or m < 8:
            raise UserError(f"--box-size must be between 8 and the particle box {particle_box}, got {m}")
        return m, fov / m
    if reference_pixel > particle_pixel * (1 + 1e-3):
        m = max(8, int(round(fov / reference_pixel)))
        return min(m, particle_box), fov / min(m, particle_box)
    return particle_box, particle_pixel


def load_reference(path, *, map_pixel_size_angstrom: float | None = None, particle_box: int,
                   particle_pixel_angstrom: float) -> MapData:
    """Read a reference: an MRC map as it is (voxel size from ``map_pixel_size_angstrom`` or the
    header), or an atomic model (``.pdb``/``.cif``) turned into density on the particles' grid
    (:func:`cryopose.simulate.volumes.load_volume`, the same density ``cryopose simulate`` uses).

    Raises:
        InputFileError: Unreadable or non-cubic map, unknown file type.
        PixelSizeError: Map header without a voxel size and none given.
    """
    from ..io.mrc import read_map
    from ..simulate.volumes import MODEL_SUFFIXES, load_volume

    if str(path).lower().endswith(MODEL_SUFFIXES):
        return load_volume(path, box_size=int(particle_box), pixel_size_angstrom=float(particle_pixel_angstrom))
    return read_map(path, pixel_size_angstrom=map_pixel_size_angstrom, require_cubic=True)


def reference_scale_problem(reference: MapData, particle_box: int, particle_pixel_angstrom: float,
                            *, rel_tol: float = 0.01) -> str | None:
    """Why a reference map and the particles do not seem to be on one scale, or ``None``.

    The map's voxel size must agree with the particles' pixel size within ``rel_tol`` (1 %),
    unless the map is a resampled copy of the particles' box (a binned map: its field of view,
    box × voxel size, agrees within ``rel_tol``), which the search handles by design. Anything
    else is most often a wrong map header (EMDB maps, binned exports): the search would match
    the particles against a map of the wrong size and return wrong poses with exit status 0.

    Args:
        reference: The map and its voxel size (header or ``--map-pixel-size``).
        particle_box: The particles' box in pixels.
        particle_pixel_angstrom: The particles' pixel size in Å.
        rel_tol: Relative tolerance of both comparisons.

    Returns:
        One sentence (voxel sizes, their difference in %, fields of view) or ``None``.
    """
    a_r, a_p = float(reference.pixel_size_angstrom), float(particle_pixel_angstrom)
    fov_r, fov_p = np.asarray(reference.volume).shape[-1] * a_r, int(particle_box) * a_p
    if math.isclose(a_r, a_p, rel_tol=rel_tol) or math.isclose(fov_r, fov_p, rel_tol=rel_tol):
        return None
    return (f"the map's voxel size ({a_r:g} Å) differs from the particles' pixel size ({a_p:g} Å) by "
            f"{100 * abs(a_r - a_p) / a_p:.0f}%, and its field of view ({fov_r:.1f} Å) from theirs "
            f"({fov_p:.1f} Å), so it is not a binned copy either: a wrong map header?")


def search_particles(stack, metadata: ParticleMetadata, reference: MapData, *, config: SearchConfig,
                     box_size: int | None = None, invert_contrast: bool | None = False, use_ctf: bool = True,
                     progress=None) -> tuple[ParticleMetadata, SearchResult, dict]:
    """Find poses of every particle of a data set by projection matching against a reference.

    Args:
        stack: Particle images (:class:`~cryopose.io.particles.ParticleStack` or a tensor).
        metadata: Their metadata (pixel size, CTF).
        reference: The reference map with its (explicit or header) voxel size.
        config: Search options (:class:`~cryopose.search.projection_matching.SearchConfig`).
        box_size: Downsample the particles to this box first (speed).
        invert_contrast: The particles are dark (negate them); ``None`` = detect it from the
            images (:func:`cryopose.data.dataset.centre_images`, one pass; the fraction of
            particles that looked bright is in ``info``).
        use_ctf: Use the metadata's CTF (ignored when it has none).
        progress: ``progress(done, total)`` callback.

    Returns:
        ``(metadata_out, result, info)``: the metadata with ``rotmats`` and ``shifts_angstrom``
        replaced by the search's, the raw :class:`SearchResult`, and a JSON-ready dict of the
        working grid and run facts.

    Raises:
        UserError: Non-cubic reference, mismatched sizes, bad options.
    """
    n_p = int(metadata.box_size or stack.box_size)
    a_p = float(metadata.pixel_size_angstrom)
    vol = np.asarray(reference.volume, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise UserError(f"the reference must be a cubic map, got shape {vol.shape}")
    a_r = float(reference.pixel_size_angstrom)
    m, a = working_grid(n_p, a_p, a_r, box_size)
    ref_fov, part_fov = vol.shape[-1] * a_r, n_p * a_p
    ref = resample_volume(vol, a_r, a, m)
    ctf = metadata.ctf if use_ctf else None
    detected = None
    if invert_contrast is None:
        from ..data.dataset import centre_images

        res = centre_images(ResampledImages(stack, m), metadata.replace(pixel_size_angstrom=a, box_size=m),
                            iterations=1, use_ctf=use_ctf)
        invert_contrast, detected = res.contrast_sign < 0, res.contrast_fraction
    images = ResampledImages(stack, m, invert_contrast=invert_contrast)
    result = search_poses(images, torch.from_numpy(np.array(ref, dtype=np.float32)), a, ctf=ctf, config=config,
                          progress=progress)
    out = metadata.replace(rotmats=result.rotmats, shifts_angstrom=result.shifts_angstrom)
    info = {
        "n_particles": len(metadata),
        "particle_box": n_p, "particle_pixel_angstrom": a_p,
        "reference_box": int(vol.shape[-1]), "reference_pixel_angstrom": a_r,
        "working_box": m, "working_pixel_angstrom": a,
        "field_of_view_angstrom": {"particles": part_fov, "reference": ref_fov},
        "invert_contrast": bool(invert_contrast), "contrast_detected": detected is not None,
        "contrast_fraction_bright": detected, "ctf": ctf is not None,
        "config": dataclasses.asdict(config), "grid": result.info, "seconds": result.seconds,
        "score": {"mean": float(result.scores.mean()), "median": float(result.scores.median()),
                  "min": float(result.scores.min()), "max": float(result.scores.max())},
    }
    if not math.isclose(ref_fov, part_fov, rel_tol=0.02):
        info["warning"] = (f"the reference's field of view ({ref_fov:.1f} Å) differs from the particles' "
                           f"({part_fov:.1f} Å); the reference was cropped/padded around its centre")
    return out, result, info
