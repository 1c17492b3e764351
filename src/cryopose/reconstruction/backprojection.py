"""Known-pose reconstruction: CTF-weighted Fourier-slice insertion, half maps, FSC-based Wiener filter.

Method (RELION's ``relion_reconstruct`` / ``BackProjector``; Scheres, J. Mol. Biol. 415, 2012;
Scheres, J. Struct. Biol. 180, 2012, eq. 15-16), in cryopose's conventions
(:mod:`cryopose.conventions`, :mod:`cryopose.projection`):

1. Each image ``X`` (``(n, n)``, real) is transformed (centred 2D FFT), re-centred with the
   conjugate of :func:`cryopose.projection.origin_phases` (RELION origin sign), and its
   central slice is inserted, at the padded-grid points ``pad · Rᵀ (kx, ky, 0)ᵀ`` (``|k| < n/2``),
   into a data grid ``D += CTF · X`` and a weight grid ``W += CTF²`` by trilinear scattering —
   the exact adjoint of the projector's slice interpolation
   (:func:`cryopose.projection.fourier_slice.insert_slices`; here a fused, Friedel-halved
   version of the same scatter, see :class:`Backprojector`). Without CTF, ``CTF = 1``. With a
   point group, every image is inserted at all poses ``R S_g`` (``V(S x) = V(x)`` makes the
   images of ``R`` and ``R S`` identical; :mod:`cryopose.symmetry`).
2. Particles are split into two half sets (RELION's ``rlnRandomSubset`` when the STAR file has
   it, else a seeded random split) that accumulate separately; the full grids are their sums.
3. The map is ``V̂(k) = D(k) / (W(k) + λ(k))`` on the padded grid, then inverse FFT, crop to
   ``n³``, and division by the trilinear kernel's transform
   (:func:`cryopose.projection.fourier_slice.gridding_correction`, ``sinc²`` per axis):
   ``D / W`` is a local kernel average of the slices, i.e. the true transform convolved with
   the trilinear kernel, whose real-space effect is a multiplication by ``sinc²`` — so one
   *divides* (RELION's ``griddingCorrect``).
4. The regulariser is RELION's tau² term (``BackProjector::updateSSNRarrays`` /
   ``reconstruct``): ``λ(k) = <W>_shell(k) / SSNR(k)``, where ``<W>_shell`` is the shell
   average of the weights (RELION's ``1 / sigma2``) and the spectral SNR comes from the FSC
   ``f`` of the half maps (clamped to ``[0.001, 0.999]``). We use ``SSNR = f / (1 − f)`` for
   each half map and ``SSNR = 2 f / (1 − f)`` for the full map (twice the particles: the
   MMSE/Wiener choice); :class:`FilterOptions` offers RELION's joined-map conversion instead
   (``C = sqrt(2 f / (1 + f))``, ``SSNR = C / (1 − C)``, which damps less). Half maps start
   from ``SSNR = 1 / tikhonov`` (nearly unregularised, like ``relion_reconstruct``'s output)
   and may be recomputed ``fsc_iterations − 1`` times with the FSC of the previous pass; the
   last FSC is the one reported and the one that filters the full map. Without half maps,
   ``λ = tikhonov · <W>_shell``.
5. The filter ``W / (W + λ)`` is applied in two parts (:meth:`Backprojector.volume`): its
   per-voxel variation within each shell on the padded grid, and its shell mean ``G(s)`` (the
   Wiener damping) last, on the ``n³`` transform after all real-space steps. Averaged over
   each shell this is exactly the tau²-regularised map; damping last keeps the crop and corner
   mask from leaking stronger shells into strongly damped ones, which otherwise cost up to one
   shell of FSC against the truth in the benchmark (SNR 0.01: 0.143 crossing at 11.84 Å
   instead of 11.15 Å; RELION 11.30 Å).
6. As RELION (``softMaskOutsideMap`` in ``BackProjector::windowToOridimRealSpace``), the map
   outside a sphere of radius ``n / 2`` is replaced by its mean, with a 3-voxel cosine edge
   (:func:`soft_mask_outside_map`): the box corners hold only gridding noise and aliasing
   (kept, they cost 0.6 Å at FSC = 0.5 against the truth in the benchmark at SNR 0.1).

RELION also replaces ``1 / W`` by Pipe & Menon's iterative density compensation (10 passes
with a blob kernel). It is not done here: with ``D / W`` and the same corner mask the FSC
against the truth is as good as RELION's on the benchmark (FSC = 0.5 at 12.16 vs 12.22 Å for
SNR 0.1, 20.14 vs 20.16 Å for SNR 0.01), and the passes would cost 20 FFTs of the padded grid
(most of ``relion_reconstruct``'s fixed ~3 s). The DC term of both programs' maps is off
(kernel averaging next to the sharp peak of sampling density at the origin), which only
shifts the map's mean.

Accuracy: the scatter runs in float32 per batch and is flushed into complex128 / float64
accumulators every ``flush_every`` slices, so rounding does not grow with ``N``.
Memory: per half set, a grid of ``(N + 3)² · (N/2 + 2)`` voxels (``N = pad·n``; the ``x >= 0``
half of Fourier space plus a margin) at 36 bytes each (complex128 + float64 accumulators,
three float32 scratch grids): 0.04 GB for ``n = 64``, 0.3 GB for ``n = 128``, 2.5 GB for
``n = 256`` — independent of the number of particles (images are streamed in chunks).

Speed (64-px particles, one CPU thread, CPU time of the whole command on a shared machine):
``cryopose reconstruct`` about 0.25 ms per particle plus ~3.5 s fixed (Python and torch
start-up, reading the STAR file, FFTs); ``relion_reconstruct --ctf`` about 0.4-0.5 ms per
particle plus ~3 s fixed (start-up and the final reconstruction with its 10 Pipe-Menon
passes). ``threads=2`` inserts the two half sets in parallel.
"""

from __future__ import annotations

import torch

from .backprojector import Backprojector, radial_filter, soft_mask_outside_map
from .halfmaps import (  # noqa: F401  (random_half_sets re-exported)
    FilterOptions,
    ReconstructionResult,
    assign_half_sets,
    finish_reconstruction,
    random_half_sets,
)

__all__ = [
    "Backprojector",
    "FilterOptions",
    "ReconstructionResult",
    "reconstruct",
    "reconstruct_from_tensors",
    "radial_filter",
    "random_half_sets",
    "soft_mask_outside_map",
]


def _progress(total: int, enabled):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = total >= 5000
    return tqdm(total=total, unit="ptcl", desc="reconstruct", disable=None if enabled else True, leave=False)


@torch.no_grad()
def reconstruct(stack, metadata, *, symmetry: str = "C1", pad: int = 2, chunk_size: int | None = None,
                generator: torch.Generator | None = None, half_maps: bool = True,
                half_sets: torch.Tensor | None = None, use_ctf: bool = True,
                options: FilterOptions | None = None, device=None, threads: int = 1,
                progress: bool | None = None) -> ReconstructionResult:
    """Reconstruct a map from particles with known poses (RELION ``relion_reconstruct``-like).

    Images are streamed ``chunk_size`` at a time, so memory is bounded for any number of
    particles. See the module docstring for the method and the regulariser.

    Args:
        stack: :class:`cryopose.io.particles.ParticleStack` (``iter_chunks``; images ``(B, n, n)``).
        metadata: :class:`cryopose.io.particles.ParticleMetadata` with ``rotmats`` (RELION
            matrices), optional ``shifts_angstrom`` (RELION origin sign) and ``ctf``.
        symmetry: Point group (``C1``, ``D2``, ``I``…), RELION axis conventions.
        pad: Fourier padding factor (RELION's ``--pad``, default 2).
        chunk_size: Images read and inserted at once (default: 64 MiB of float32 images, at
            least 256). Larger chunks sort more slices by viewing direction (faster scatter).
        generator: Seeds the random half-set split.
        half_maps: Accumulate two half sets, compute their FSC and use it to filter the map.
        half_sets: Optional ``(N,)`` 0/1 half-set assignment; by default RELION's
            ``rlnRandomSubset`` (1/2) from ``metadata.table`` if present, else a random split.
        use_ctf: Apply the CTF from ``metadata.ctf`` (ignored when there is none: ``CTF = 1``).
        options: :class:`FilterOptions` (regulariser, corner mask); default ``FilterOptions()``.
        device: Device for the grids (default CPU); images are read on the CPU and inserted there.
        threads: Python threads inserting the two half sets concurrently (see :class:`Backprojector`).
        progress: Show a tqdm bar (default: for ``N >= 5000`` on a terminal).

    Returns:
        :class:`ReconstructionResult`, its maps and FSC on the CPU whatever ``device``.

    Raises:
        cryopose.errors.UserError: No poses in the metadata, fewer than 2 particles for half
            maps, or stack and metadata of different lengths.
        cryopose.symmetry.SymmetryError: Unknown symmetry.
    """
    from ..errors import UserError
    from ..symmetry import canonical_symbol

    symmetry = canonical_symbol(symmetry)
    n_total = len(metadata)
    src = getattr(metadata, "source", "<memory>")
    if metadata.rotmats is None:
        raise UserError(f"{src}: the particles have no poses (rlnAngleRot/Tilt/Psi); cannot reconstruct")
    if len(stack) != n_total:
        raise UserError(f"{src}: {len(stack)} images but {n_total} metadata rows")
    n = int(stack.box_size if getattr(stack, "box_size", None) else metadata.box_size)
    apix = float(metadata.pixel_size_angstrom)
    sets, source = assign_half_sets(n_total, half_maps, half_sets, getattr(metadata, "table", None), generator, src)
    bp = Backprojector(n, pad=pad, symmetry=symmetry, n_sets=2 if half_maps else 1, device=device, threads=threads)
    ctf_params = metadata.ctf if use_ctf else None
    if chunk_size is None:
        chunk_size = max(256, 2**24 // (n * n))
    with _progress(n_total, progress) as bar:
        for idx, images in stack.iter_chunks(chunk_size):
            t = torch.as_tensor(idx, dtype=torch.int64)
            shifts = None
            if metadata.shifts_angstrom is not None:
                shifts = metadata.shifts_angstrom[t].double() / apix
            ctf = ctf_params[t] if ctf_params is not None else None
            bp.insert(images, metadata.rotmats[t], shifts_px=shifts, ctf=ctf, sets=sets[t],
                      pixel_size_angstrom=apix)
            bar.update(len(idx))
    result = finish_reconstruction(bp, apix, half_maps=half_maps, symmetry=symmetry, half_source=source,
                                   options=options or FilterOptions())
    return _on_cpu(result)


def _on_cpu(result):
    """The result with its tensors (maps, FSC) on the CPU, whatever device the grids were on."""
    import dataclasses

    def cpu(v):
        if isinstance(v, torch.Tensor):
            return v.cpu()
        if isinstance(v, tuple) and v and all(isinstance(t, torch.Tensor) for t in v):
            return tuple(t.cpu() for t in v)
        return v

    return dataclasses.replace(result, **{f.name: cpu(getattr(result, f.name)) for f in dataclasses.fields(result)
                                          if f.init})


@torch.no_grad()
def reconstruct_from_tensors(images: torch.Tensor, rotmats: torch.Tensor, shifts_px: torch.Tensor | None = None,
                             ctf=None, *, pixel_size_angstrom: float, symmetry: str = "C1", pad: int = 2,
                             chunk_size: int = 1024, generator: torch.Generator | None = None,
                             half_maps: bool = True, half_sets: torch.Tensor | None = None,
                             options: FilterOptions | None = None, threads: int = 1) -> ReconstructionResult:
    """Reconstruct from images held in memory (for training code and tests).

    Args:
        images: ``(N, n, n)`` real images (any device; the grids live on it).
        rotmats: ``(N, 3, 3)`` RELION rotation matrices.
        shifts_px: ``(N, 2)`` RELION origins in pixels, or ``None``.
        ctf: ``(N, n, n)`` CTF values on the centred grid, a :class:`cryopose.ctf.CTFParams`
            of ``N`` particles, or ``None`` (``CTF = 1``).
        pixel_size_angstrom: Pixel size in Å (for the CTF and the FSC frequencies).
        symmetry, pad, chunk_size, generator, half_maps, half_sets, options, threads: As
            :func:`reconstruct`.

    Returns:
        :class:`ReconstructionResult`.

    Raises:
        ValueError: Inconsistent shapes.
        cryopose.errors.UserError: Fewer than 2 images with ``half_maps``.
    """
    from ..symmetry import canonical_symbol

    symmetry = canonical_symbol(symmetry)
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (N, n, n), got {tuple(images.shape)}")
    n_total, n = images.shape[0], images.shape[-1]
    sets, source = assign_half_sets(n_total, half_maps, half_sets, None, generator, "<memory>")
    bp = Backprojector(n, pad=pad, symmetry=symmetry, n_sets=2 if half_maps else 1, device=images.device,
                       threads=threads)
    for start in range(0, n_total, int(chunk_size)):
        sl = slice(start, start + int(chunk_size))
        c = None if ctf is None else ctf[sl]
        bp.insert(images[sl], rotmats[sl], shifts_px=None if shifts_px is None else shifts_px[sl], ctf=c,
                  sets=sets[sl].to(images.device), pixel_size_angstrom=pixel_size_angstrom)
    return finish_reconstruction(bp, float(pixel_size_angstrom), half_maps=half_maps, symmetry=symmetry,
                                 half_source=source, options=options or FilterOptions())
