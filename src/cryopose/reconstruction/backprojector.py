"""The Fourier-grid accumulator of known-pose reconstruction (:class:`Backprojector`) and its
map-space helpers; the method is described in :mod:`cryopose.reconstruction.backprojection`,
which re-exports these names and drives them (:func:`~cryopose.reconstruction.backprojection.reconstruct`).
"""

from __future__ import annotations

import math

import torch

from ..fourier import frequency_indices
from ..projection.fourier_slice import gridding_correction
from .grid_symmetry import signed_permutations, symmetrise_half_grids

__all__ = ["Backprojector", "radial_filter", "soft_mask_outside_map"]


def _direction_order_key(rotmats: torch.Tensor) -> torch.Tensor:
    """Sort key grouping poses by the plane of their central slice (viewing direction ±d).

    ``d = Rᵀ e_z`` (third row of ``R``), folded to ``d_z >= 0``; bands of polar angle 0.15 rad,
    azimuth within a band.
    """
    d = rotmats[:, 2, :]
    d = d * torch.where(d[:, 2:3] < 0, -1.0, 1.0).to(d.dtype)
    theta = torch.acos(d[:, 2].clamp(-1.0, 1.0))
    phi = torch.atan2(d[:, 1], d[:, 0])
    return torch.floor(theta / 0.15) * 10.0 + phi


def soft_mask_outside_map(volume: torch.Tensor, *, radius: float | None = None,
                          cosine_width: float = 3.0) -> torch.Tensor:
    """RELION's ``softMaskOutsideMap``: replace everything outside a sphere by the background mean.

    Voxels at distance ``r`` from the origin (index ``n // 2``) keep their value for
    ``r < radius``, are blended with a raised cosine over ``radius ≤ r ≤ radius + cosine_width``,
    and are set to the (cosine-weighted) mean of the outer region beyond. RELION applies it to
    every reconstruction (``BackProjector::windowToOridimRealSpace``) to remove the noise and
    aliasing that gridding leaves in the corners of the box.

    Args:
        volume: ``(n, n, n)`` real map.
        radius: Sphere radius in voxels (default ``n / 2``).
        cosine_width: Width of the soft edge in voxels.

    Returns:
        The masked map (a new tensor).
    """
    n = volume.shape[-1]
    radius = n / 2.0 if radius is None else float(radius)
    k = frequency_indices(n, device=volume.device, dtype=torch.float64)
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    outer = radius + cosine_width
    blend = torch.where(r < radius, torch.zeros_like(r),
                        torch.where(r > outer, torch.ones_like(r),
                                    0.5 + 0.5 * torch.cos(math.pi * (outer - r) / cosine_width)))
    total = blend.sum()
    if total <= 0:
        return volume.clone()
    background = (blend * volume).sum() / total
    blend = blend.to(volume.dtype)
    return (1 - blend) * volume + blend * background.to(volume.dtype)


class Backprojector:
    """Streaming accumulator of CTF-weighted central slices for one or more particle sets.

    Use :meth:`insert` for every batch of images, then :meth:`volume` (one set or the sum of
    sets) — :func:`reconstruct` and :func:`reconstruct_from_tensors` do this for you.

    The scatter is RELION's half-transform insertion: only image pixels with ``kx >= 0`` are
    inserted (the ``kx = 0`` line with weight ½); a point whose 3D coordinate has ``x < 0`` is
    replaced by its Friedel mate (``−p``, conjugate value), so the grids hold the ``x >= 0``
    half of Fourier space; at the end the ``x = 0`` plane is made Hermitian. This is exactly
    the trilinear scatter of all image pixels (the trilinear kernel is symmetric about the
    grid's origin node), at half the cost and memory.

    Symmetry: an image of pose ``R`` stands for the ``G`` images of poses ``R S_g``. For groups
    of signed permutations (C2, C4, D2, D4, O) it is inserted once and :meth:`grids` sums
    ``D(S_g k)`` over the group (:mod:`cryopose.reconstruction.grid_symmetry`, exact); other
    groups (C3, D7, I…) insert every image at all ``G`` poses.

    Args:
        box_size: Image edge ``n`` in pixels.
        pad: Padding factor of the Fourier grid (``N = pad·n``; RELION's default 2).
        symmetry: Point-group symbol (``C1``, ``D2``, ``I``…; :func:`cryopose.symmetry.symmetry_operators`).
        n_sets: Number of independent accumulators (2 for half maps, 1 otherwise).
        device: Device of the grids (that of the images you insert).
        batch_slices: Slices scattered at once (memory ``~ batch_slices · n² · 100`` bytes).
        flush_every: Slices accumulated in float32 before being added to the float64 grids.
        threads: Python threads scattering the sets concurrently (at most one per set; default 1,
            serial). Each runs torch ops with torch's own intra-op threads, so with
            ``threads > 1`` set ``torch.set_num_threads`` to the cores per worker (the CLI does).
        symmetrise_grids: Symmetrise the grids instead of inserting every image ``G`` times:
            ``None`` (default) when the group's operators are signed permutations; ``False``
            always inserts ``G`` times (the reference the tests compare against).

    Raises:
        ValueError: ``box_size < 2``, ``pad < 1`` or ``n_sets < 1``, or ``symmetrise_grids=True``
            for a group whose operators are not signed permutations.
        cryopose.symmetry.SymmetryError: Unknown symmetry.
    """

    def __init__(self, box_size: int, *, pad: int = 2, symmetry: str = "C1", n_sets: int = 2, device=None,
                 batch_slices: int = 64, flush_every: int = 4096, threads: int | None = None,
                 symmetrise_grids: bool | None = None):
        from ..symmetry import symmetry_operators

        n = int(box_size)
        if n < 2:
            raise ValueError(f"box_size must be >= 2, got {box_size}")
        if int(pad) < 1:
            raise ValueError(f"pad must be >= 1, got {pad}")
        if int(n_sets) < 1:
            raise ValueError(f"n_sets must be >= 1, got {n_sets}")
        self.box_size = n
        self.pad = int(pad)
        self.n_sets = int(n_sets)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.symmetry = str(symmetry)
        self.operators = symmetry_operators(symmetry, dtype=torch.float64, device=self.device)
        lattice = signed_permutations(self.operators)
        if symmetrise_grids and lattice is None:
            raise ValueError(f"symmetry {symmetry}: its operators do not map grid nodes onto grid nodes")
        #: ``(G, 3, 3)`` integer operators used by :meth:`grids`, or ``None`` (images inserted ``G`` times)
        self.grid_operators = lattice if symmetrise_grids is not False and self.operators.shape[0] > 1 else None
        self.batch_slices = max(1, int(batch_slices))
        self.flush_every = max(1, int(flush_every))
        self.threads = 1 if threads is None else max(1, int(threads))
        size = self.pad * n
        self._size = size  # N
        self._c = size // 2 + 1  # index of the origin along y and z (one node of margin)
        self._g = 2 * self._c + 1  # y, z extent: indices 0 .. 2c, symmetric about c
        self._gx = size // 2 + 2  # x extent: 0 .. N//2 + 1
        shape = (self.n_sets, self._g, self._g, self._gx)
        self.data = torch.zeros(shape, dtype=torch.complex128, device=self.device)
        self.weight = torch.zeros(shape, dtype=torch.float64, device=self.device)
        self._scratch_re = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self._scratch_im = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self._scratch_weight = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self._pending = 0
        self._geom = None
        self.n_inserted = torch.zeros(self.n_sets, dtype=torch.int64)
        # Image pixels inserted: |k| < n/2 and kx >= 0; the kx = 0 line counts half (its mirror
        # image -ky is in the set too).
        k = frequency_indices(n, device=self.device)
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        keep = ((kx**2 + ky**2) < (n / 2.0) ** 2) & (kx >= 0)
        self._pixels = torch.nonzero(keep.reshape(-1)).reshape(-1)
        self._plane = torch.stack([kx.reshape(-1)[self._pixels], ky.reshape(-1)[self._pixels]], dim=-1)  # (P, 2)
        self._half = torch.where(kx.reshape(-1)[self._pixels] == 0, 0.5, 1.0).to(torch.float32)
        kxs, kys = self._plane[:, 0].long(), self._plane[:, 1].long()
        self._rpixels = (kys % n) * (n // 2 + 1) + kxs  # the same pixels in rfft2 layout
        self._kx_rfft = torch.arange(n // 2 + 1, device=self.device, dtype=torch.float64)[None]  # rfft2 columns
        self._ky_rfft = torch.fft.fftfreq(n, d=1.0 / n, device=self.device, dtype=torch.float64)[None]  # rows
        self._k_centred = frequency_indices(n, device=self.device, dtype=torch.float64)[None]
        g, gx = self._g, self._gx
        self._index_dtype = torch.int32 if g * g * gx < 2**31 else torch.int64
        self._corner_offsets = torch.tensor(
            [(dz * g + dy) * gx + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)],
            dtype=self._index_dtype, device=self.device)
        self._origin_t = torch.tensor([0.0, float(self._c), float(self._c)], device=self.device).view(1, 3, 1)
        self._plane_t = self._plane.to(torch.float32).T.contiguous()  # (2, P)
        self._corner_offsets_t = self._corner_offsets.view(1, 8, 1)

    # ------------------------------------------------------------------ insertion
    @torch.no_grad()
    def insert(self, images: torch.Tensor, rotmats: torch.Tensor, *, shifts_px: torch.Tensor | None = None,
               ctf=None, sets: torch.Tensor | None = None, fourier: bool = False,
               pixel_size_angstrom: float | None = None) -> None:
        """Insert a batch of particle images.

        Args:
            images: ``(B, n, n)`` real images (or centred transforms if ``fourier``).
            rotmats: ``(B, 3, 3)`` RELION rotation matrices (the projector's ``R``).
            shifts_px: ``(B, 2)`` RELION origins ``(x, y)`` in pixels (content drawn at ``−s``),
                or ``None`` for centred particles.
            ctf: ``(B, n, n)`` CTF on the centred grid (:func:`cryopose.ctf.compute_ctf`), a
                :class:`cryopose.ctf.CTFParams` of ``B`` particles (then evaluated only at the
                inserted pixels, :meth:`ctf_at_pixels`; needs ``pixel_size_angstrom``), or
                ``None`` for ``CTF = 1``.
            sets: ``(B,)`` int set index in ``[0, n_sets)`` per image (default all 0).
            fourier: ``images`` are already centred 2D transforms (complex).
            pixel_size_angstrom: Pixel size in Å, for CTF parameters.

        Raises:
            ValueError: On shape mismatches or a set index out of range.
        """
        n = self.box_size
        b = images.shape[0]
        if images.shape[-2:] != (n, n) or images.ndim != 3:
            raise ValueError(f"images must be (B, {n}, {n}), got {tuple(images.shape)}")
        if rotmats.shape != (b, 3, 3):
            raise ValueError(f"rotmats must be ({b}, 3, 3), got {tuple(rotmats.shape)}")
        if shifts_px is not None and shifts_px.shape != (b, 2):
            raise ValueError(f"shifts_px must be ({b}, 2), got {tuple(shifts_px.shape)}")
        if isinstance(ctf, torch.Tensor) and ctf.shape != (b, n, n):
            raise ValueError(f"ctf must be ({b}, {n}, {n}), got {tuple(ctf.shape)}")
        if ctf is not None and not isinstance(ctf, torch.Tensor) and len(ctf) != b:
            raise ValueError(f"ctf parameters for {len(ctf)} particles, expected {b}")
        if sets is None:
            sets = torch.zeros(b, dtype=torch.int64, device=self.device)
        sets = torch.as_tensor(sets, device=self.device).long().reshape(-1)
        if sets.shape[0] != b or (b and (int(sets.min()) < 0 or int(sets.max()) >= self.n_sets)):
            raise ValueError(f"sets must be ({b},) with values in [0, {self.n_sets})")
        if b == 0:
            return
        dev = self.device
        sets = sets.to(dev)
        work = []
        for s in range(self.n_sets):
            sel = torch.nonzero(sets == s).reshape(-1) if self.n_sets > 1 else None
            if sel is not None and sel.numel() == 0:
                continue
            work.append((s, sel))

        def run(item):
            s, sel = item
            pick = (lambda t: t) if sel is None else (lambda t: None if t is None else t[sel.to(t.device)])
            ctf_s = None
            if ctf is not None:
                ctf_s = ctf if sel is None else ctf[sel.to(ctf.device) if isinstance(ctf, torch.Tensor) else sel.cpu()]
            self._insert_set(s, pick(images), pick(rotmats), pick(shifts_px), ctf_s, fourier, pixel_size_angstrom)

        if len(work) > 1 and self.threads > 1:
            # One thread per half set, each with its own scratch grids (disjoint memory); torch
            # releases the GIL inside its kernels.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(len(work), self.threads)) as pool:
                for fut in [pool.submit(run, item) for item in work]:
                    fut.result()
        else:
            for item in work:
                run(item)
        self._pending += b * self._poses_per_image()
        self.n_inserted += torch.bincount(sets.cpu(), minlength=self.n_sets)
        if self._pending >= self.flush_every:
            self.flush()

    def _insert_set(self, s: int, images, rotmats, shifts_px, ctf, fourier: bool, pixel_size_angstrom) -> None:
        """Pre-process a batch of one set (FFT, re-centring, CTF, symmetry) and scatter it."""
        n, b, dev = self.box_size, images.shape[0], self.device
        # Re-centring phase conj(origin_phases(s)) = exp(−2πi (kx sx + ky sy) / n), built as the
        # outer product of two 1D tables per image (no sine or cosine per pixel).
        if fourier:  # centred transforms: frequencies j − n // 2 on both axes
            ft = images.to(dev).to(torch.complex64)
            shift = None if shifts_px is None else shifts_px.to(dev, torch.float64)
            kx_vals = ky_vals = self._k_centred
            pixels = self._pixels
        else:
            # rfft2 of the uncentred image: centred_fft2(x)[k] = rfft2(x)[k mod n] · exp(+2πi k·c/n),
            # c = n // 2, so the re-centring phase becomes exp(−2πi k·(s − c)/n).
            ft = torch.fft.rfft2(images.to(dev, torch.float32))
            shift = torch.zeros(b, 2, dtype=torch.float64, device=dev) if shifts_px is None \
                else shifts_px.to(dev, torch.float64)
            shift = shift - float(n // 2)
            kx_vals, ky_vals = self._kx_rfft, self._ky_rfft
            pixels = self._rpixels
        if shift is not None:
            ax = shift[:, 0:1] * kx_vals / n
            ay = shift[:, 1:2] * ky_vals / n
            px = torch.polar(torch.ones(ax.shape, device=dev), (-2.0 * math.pi * (ax - torch.round(ax))).float())
            py = torch.polar(torch.ones(ay.shape, device=dev), (-2.0 * math.pi * (ay - torch.round(ay))).float())
            ft = ft * (py[:, :, None] * px[:, None, :])
        ft = ft.reshape(b, -1)[:, pixels]
        if ctf is not None:
            if isinstance(ctf, torch.Tensor):
                c = ctf.to(dev, torch.float32).reshape(b, n * n)[:, self._pixels]
            else:
                if pixel_size_angstrom is None:
                    raise ValueError("insert: CTF parameters need pixel_size_angstrom")
                c = self.ctf_at_pixels(ctf, pixel_size_angstrom)
            ch = c * self._half
            ft = ft * ch
            w = c * ch
        else:
            ft = ft * self._half
            w = self._half.expand(b, -1)
        rot = rotmats.to(dev, torch.float64)
        g = self._poses_per_image()
        if g > 1:  # every image at all poses R S_g; the images themselves are not copied
            rot = (rot[:, None] @ self.operators[None]).reshape(b * g, 3, 3)
        # Slices of similar viewing direction touch the same voxels: ordering them so makes the
        # scatter cache-friendly (~15 % faster); the sum does not depend on the order.
        order = torch.argsort(_direction_order_key(rot))
        image_of = order // g
        for start in range(0, rot.shape[0], self.batch_slices):
            o, i = order[start:start + self.batch_slices], image_of[start:start + self.batch_slices]
            self._scatter(s, ft[i], w[i], rot[o])

    def _poses_per_image(self) -> int:
        """Poses each image is scattered at: 1 when the grids are symmetrised, else ``G``."""
        return 1 if self.grid_operators is not None else int(self.operators.shape[0])

    def ctf_at_pixels(self, params, pixel_size_angstrom: float) -> torch.Tensor:
        """CTF values ``(B, P)`` (float32) at the inserted pixels only.

        The formula of :func:`cryopose.ctf.compute_ctf` (``sin χ``, optional B-factor
        envelope), evaluated at the ``P`` half-plane pixels instead of the full ``n × n`` grid:
        2.5× less work. ``tests/unit/test_reconstruction.py`` checks it equals ``compute_ctf``.
        """
        from ..ctf import electron_wavelengths_angstrom

        dev = self.device
        k = self._plane.to(dev, torch.float32) / (self.box_size * float(pixel_size_angstrom))  # (P, 2) 1/Å
        k2 = (k * k).sum(-1)[None]
        theta = torch.atan2(k[:, 1], k[:, 0])[None]

        def col(t):
            return t.to(dev, torch.float32)[:, None]

        lam = electron_wavelengths_angstrom(params.voltage_kv.to(dev))[:, None]
        du, dv = col(params.defocus_u_angstrom), col(params.defocus_v_angstrom)
        alpha = torch.deg2rad(col(params.defocus_angle_deg))
        defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2.0 * (theta - alpha))
        cs = col(params.spherical_aberration_mm) * 1e7
        chi = (math.pi * lam * defocus * k2 - 0.5 * math.pi * cs * lam**3 * k2**2
               + torch.deg2rad(col(params.phase_shift_deg)) + torch.asin(col(params.amplitude_contrast)))
        ctf = torch.sin(chi)
        b = col(params.bfactor_angstrom2)
        if bool((b != 0).any()):
            ctf = ctf * torch.exp(-b * k2 / 4.0)
        return ctf

    def _scatter(self, s: int, values: torch.Tensor, weights: torch.Tensor, rot: torch.Tensor) -> None:
        # Padded-grid coordinates (x, y, z) of each pixel, laid out (S, 3, P):
        # pad · Rᵀ (kx, ky, 0)ᵀ uses rows 0 and 1 of R.
        rt = (rot[:, :2, :] * self.pad).transpose(1, 2).to(torch.float32)  # (S, 3, 2)
        c = torch.matmul(rt, self._plane_t)  # (S, 3, P)
        sign = torch.where(c[:, 0] < 0, -1.0, 1.0)  # x < 0: insert the Friedel mate (-p, conj)
        c = c * sign[:, None] + self._origin_t
        i0 = torch.floor(c)
        f = c - i0
        i0 = i0.to(self._index_dtype)
        g, gx = self._g, self._gx
        base = (i0[:, 2] * g + i0[:, 1]) * gx + i0[:, 0]  # (S, P)
        lin = (base[:, None, :] + self._corner_offsets_t).reshape(-1)  # (S, 8, P)
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        gx_, gy_, gz_ = 1 - fx, 1 - fy, 1 - fz
        zy = (gz_ * gy_, gz_ * fy, fz * gy_, fz * fy)
        tri = torch.stack([cz * x for cz in zy for x in (gx_, fx)], dim=1)  # (S, 8, P), order of the offsets
        re = values.real.contiguous()
        im = values.imag * sign
        self._scratch_re[s].view(-1).index_add_(0, lin, (re[:, None, :] * tri).reshape(-1))
        self._scratch_im[s].view(-1).index_add_(0, lin, (im[:, None, :] * tri).reshape(-1))
        self._scratch_weight[s].view(-1).index_add_(0, lin, (weights[:, None, :] * tri).reshape(-1))

    def flush(self) -> None:
        """Add the float32 scratch grids into the float64 accumulators and clear them."""
        if self._pending:
            self.data += torch.complex(self._scratch_re, self._scratch_im)
            self.weight += self._scratch_weight
            self._scratch_re.zero_()
            self._scratch_im.zero_()
            self._scratch_weight.zero_()
            self._pending = 0

    # ------------------------------------------------------------------ grids
    def grids(self, sets=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hermitian-completed grids of the given sets (summed), in half-transform layout.

        Args:
            sets: Set index, list of indices, or ``None`` for all sets.

        Returns:
            ``(D, W)``: complex128 and float64 ``(N, N, N // 2 + 1)``; axes ``(z, y, x)``,
            ``z, y`` centred (origin at ``N // 2``), ``x = 0 … N // 2`` (``torch.fft.rfftn``'s
            last axis); zero outside the sphere ``|k| < N / 2`` (``n / 2`` in image units).
        """
        self.flush()
        if sets is None:
            sets = list(range(self.n_sets))
        sets = [sets] if isinstance(sets, int) else list(sets)
        d = self.data[sets].sum(0)
        w = self.weight[sets].sum(0)
        d0, w0 = d[:, :, 0].clone(), w[:, :, 0].clone()
        d[:, :, 0] = d0 + torch.flip(d0, (0, 1)).conj()
        w[:, :, 0] = w0 + torch.flip(w0, (0, 1))
        size, c = self._size, self._c
        lo = c - size // 2
        d = d[lo:lo + size, lo:lo + size, : size // 2 + 1].contiguous()
        w = w[lo:lo + size, lo:lo + size, : size // 2 + 1].contiguous()
        inside = self._geometry()["inside"]
        d, w = d.masked_fill_(~inside, 0), w.masked_fill_(~inside, 0)
        if self.grid_operators is not None:
            d, w = symmetrise_half_grids(d, w, self.grid_operators, inside)
        return d, w

    def _geometry(self) -> dict:
        """Cached geometry of the ``(N, N, N // 2 + 1)`` half grid (masks, shells, multiplicities)."""
        if self._geom is None:
            size, ns = self._size, self.box_size // 2 + 1
            k = frequency_indices(size, device=self.device, dtype=torch.float64)
            kx = torch.arange(size // 2 + 1, device=self.device, dtype=torch.float64)
            r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
            inside = r2 < (size / 2.0) ** 2
            shell = torch.round(torch.sqrt(r2) / self.pad).long()
            mult = torch.full_like(r2, 2.0)
            mult[:, :, 0] = 1.0
            sel = torch.nonzero((inside & (shell < ns)).reshape(-1)).reshape(-1)
            sel_shell = shell.reshape(-1)[sel]
            sel_mult = mult.reshape(-1)[sel]
            self._geom = {
                "inside": inside, "shell": shell, "mult": mult, "shell_clamped": shell.clamp_max(ns),
                "sel": sel, "sel_shell": sel_shell, "sel_mult": sel_mult,
                "count": torch.zeros(ns, dtype=torch.float64, device=self.device).index_add_(0, sel_shell, sel_mult),
            }
        return self._geom

    def shells(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-shell index ``round(|k_padded| / pad)`` and multiplicity of every grid voxel.

        Returns:
            ``(shell, multiplicity)`` of shape ``(N, N, N // 2 + 1)`` (int64, float64); voxels
            with ``x > 0`` stand for two (their Friedel mates).
        """
        geom = self._geometry()
        return geom["shell"], geom["mult"]

    def shell_mean_weight(self, w: torch.Tensor) -> torch.Tensor:
        """Shell averages ``<W>_s`` (RELION's inverse ``sigma2``) for ``s = 0 … n // 2``, ``(n//2+1,)``."""
        geom = self._geometry()
        tot = torch.zeros(geom["count"].shape[0], dtype=torch.float64, device=w.device)
        tot.index_add_(0, geom["sel_shell"], w.reshape(-1)[geom["sel"]] * geom["sel_mult"])
        return tot / geom["count"].clamp_min(1.0)

    @torch.no_grad()
    def volume(self, d: torch.Tensor, w: torch.Tensor, regularizer: torch.Tensor | None = None, *,
               mask_corners: bool = False) -> torch.Tensor:
        """Real-space map ``(n, n, n)`` (float64) from grids of :meth:`grids`.

        Without ``regularizer``: ``V̂ = D / W`` (0 where ``W = 0``), inverse FFT, crop, gridding
        correction (divide by :func:`gridding_correction`), then optionally
        :func:`soft_mask_outside_map`.

        With ``regularizer`` ``λ`` (``(n // 2 + 1,)``, one value per image shell): the filter
        ``W / (W + λ)`` of ``V̂ = D / (W + λ)`` is split into its shell mean
        ``G(s) = <W / (W + λ)>_s`` and the rest. The padded grid gets ``D / ((W + λ) G(s))`` —
        RELION's per-voxel weighting with unit mean gain per shell — and the damping ``G(s)`` is
        applied last, as a radial filter on the ``n³`` transform, after the crop, gridding
        correction and corner mask. On average over each shell the result is exactly the
        tau²-regularised map; applied last, the strong damping of noisy shells no longer
        receives leakage from the real-space crop and mask (which, applied after it, cost up
        to one shell of FSC against the truth in ``benchmarks/reconstruct.py``).
        """
        size, n = self._size, self.box_size
        geom = self._geometry()
        denom = w
        gain = None
        if regularizer is not None:
            lam = torch.as_tensor(regularizer, dtype=torch.float64, device=w.device)
            lam = torch.cat([lam, lam[-1:]])  # slot for the corners beyond n // 2 (zero anyway)
            denom = w + lam[geom["shell_clamped"]]
            g = torch.where(denom > 0, w / torch.where(denom > 0, denom, 1.0), 0.0)
            gain = torch.zeros(lam.shape[0] - 1, dtype=torch.float64, device=w.device)
            gain.index_add_(0, geom["sel_shell"], g.reshape(-1)[geom["sel"]] * geom["sel_mult"])
            gain = gain / geom["count"].clamp_min(1.0)
            gain_ext = torch.cat([gain, gain[-1:]]).clamp_min(1e-12)
            denom = denom * gain_ext[geom["shell_clamped"]]
        denom = torch.where(denom > 0, denom, math.inf)  # no data and no prior: 0
        # the division in float64, the transform in float32 (maps are written as float32)
        f = torch.fft.ifftshift((d / denom).to(torch.complex64), dim=(0, 1))
        vol = torch.fft.irfftn(f, s=(size, size, size), dim=(0, 1, 2)).double()  # origin at index 0
        # Central n³ of fftshift(vol): index j of the crop is (j − n // 2) mod N of vol.
        idx = (torch.arange(n, device=vol.device) - n // 2) % size
        vol = vol.index_select(0, idx).index_select(1, idx).index_select(2, idx)
        vol = vol / gridding_correction(n, self.pad, device=vol.device, dtype=vol.dtype)
        if mask_corners:
            vol = soft_mask_outside_map(vol)
        if gain is not None:
            vol = radial_filter(vol, gain)
        return vol


def radial_filter(volume: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Multiply shell ``s = round(|k|)`` of a map's transform by ``gain[s]``.

    Args:
        volume: ``(n, n, n)`` real map.
        gain: ``(n // 2 + 1,)`` factors; coefficients beyond the last shell (the corners) get
            the last value.

    Returns:
        The filtered map (same dtype).
    """
    from ..metrics.fsc import shell_index_rfft

    n = volume.shape[-1]
    shell, _ = shell_index_rfft(n, device=volume.device)
    g = gain.to(volume.device, torch.float64)
    ft = torch.fft.rfftn(volume) * g[shell.clamp_max(g.shape[0] - 1)]
    return torch.fft.irfftn(ft, s=volume.shape).to(volume.dtype)
