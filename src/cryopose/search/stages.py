"""The scoring stages of :func:`cryopose.search.projection_matching.search_poses` (the method
is described there): the prepared reference and its coarse-band grid projections, the global
stage over grid × shift lattice, the local stages on ``3³`` rotation and ``3 × 3`` shift
lattices, and non-maximum suppression of candidates. Internal: no public names.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..ctf import CTFParams, compute_ctf
from ..fourier import centered_fft2
from ..projection import prepare_volume_ft
from ..rotations import local_grid
from .band import make_band, origin_phases_band, slice_band
from .grids import asymmetric_so3_grid

if TYPE_CHECKING:
    from .projection_matching import SearchConfig

__all__: list[str] = []


def _as_real(z: torch.Tensor) -> torch.Tensor:
    """Complex ``(..., K)`` → real ``(..., 2K)`` ``[Re, Im]`` so that ``Re⟨a, b⟩ = a_r · b_r``."""
    return torch.cat([z.real, z.imag], dim=-1)


class _Reference:
    """The prepared reference and its global-grid projections at the coarse band."""

    def __init__(self, volume: torch.Tensor, config: SearchConfig, pixel_size: float):
        _init_local_reference(self, volume, config, pixel_size)
        self.grid = asymmetric_so3_grid(self.steps[0], config.symmetry)
        proj = []
        for start in range(0, self.grid.shape[0], 4096):
            proj.append(slice_band(self.vft, self.grid[start:start + 4096], self.bands[0]))
        p = torch.cat(proj)
        self.grid_real = _as_real(p).contiguous()  # (J, 2K)
        self.grid_power = (p.real**2 + p.imag**2).contiguous()  # (J, K)


def _prepare_chunk(images: torch.Tensor, ctf: CTFParams | None, ref: _Reference, pixel_size: float,
                   mask: torch.Tensor | None):
    x = images.to(torch.float32)
    if mask is not None:
        mean = (x * mask).sum((-2, -1), keepdim=True) / mask.sum()
        x = (x - mean) * mask
    ft = centered_fft2(x).reshape(x.shape[0], -1)[:, ref.full.flat_index]
    if ctf is None:
        c = torch.ones(ft.shape, dtype=torch.float32)
    else:
        c = compute_ctf(ctf, ref.n, pixel_size).to(torch.float32).reshape(x.shape[0], -1)[:, ref.full.flat_index]
    return ft, c


def _global_stage(x: torch.Tensor, c: torch.Tensor, ref: _Reference, shifts_px: torch.Tensor,
                  n_keep: int, max_block: int):
    """Top ``n_keep`` (grid index, shift index, ncc) per particle over the global grid."""
    band = ref.bands[0]
    b, s = x.shape[0], shifts_px.shape[0]
    y = (x * c)[:, None, :] * origin_phases_band(shifts_px, band).conj()[None]  # (B, S, K)
    y = _as_real(y).reshape(b * s, -1)
    xnorm = (x.real**2 + x.imag**2).sum(-1).clamp_min(1e-30)  # (B,)
    c2 = c * c
    j_total = ref.grid_real.shape[0]
    jc = max(1, max_block // (b * s))
    best_v = torch.full((b, 0), -2.0)
    best_j = torch.zeros((b, 0), dtype=torch.long)
    best_s = torch.zeros((b, 0), dtype=torch.long)
    for j0 in range(0, j_total, jc):
        pr = ref.grid_real[j0:j0 + jc]
        cross = (y @ pr.T).reshape(b, s, -1)  # (B, S, Jc)
        norm = (c2 @ ref.grid_power[j0:j0 + jc].T).clamp_min(1e-30)  # (B, Jc)
        ncc = cross / torch.sqrt(norm * xnorm[:, None])[:, None, :]
        v, si = ncc.max(dim=1)  # (B, Jc)
        k = min(n_keep, v.shape[1])
        tv, tj = v.topk(k, dim=1)
        cat_v = torch.cat([best_v, tv], 1)
        cat_j = torch.cat([best_j, tj + j0], 1)
        cat_s = torch.cat([best_s, torch.gather(si, 1, tj)], 1)
        k = min(n_keep, cat_v.shape[1])
        best_v, order = cat_v.topk(k, dim=1)
        best_j = torch.gather(cat_j, 1, order)
        best_s = torch.gather(cat_s, 1, order)
    return best_j, best_s, best_v


_POOL = 8  # global candidates pooled per kept candidate before non-maximum suppression
_SHIFT_OFFSETS = torch.tensor([[dx, dy] for dy in (-1.0, 0.0, 1.0) for dx in (-1.0, 0.0, 1.0)])


def _local_stage(x: torch.Tensor, c: torch.Tensor, ref: _Reference, level: int, rot: torch.Tensor,
                 sh: torch.Tensor, shift_step: float, n_keep: int, max_block: int = 1 << 23):
    """Refine candidates ``rot (B, C, 3, 3)``, ``sh (B, C, 2)`` (px) at one level, in sub-batches of
    particles whose working arrays hold at most about ``max_block`` floats.

    Returns the ``n_keep`` best ``(rot, shift, ncc)`` per particle.
    """
    b, cands = rot.shape[:2]
    per_particle = cands * (27 + 9) * 2 * len(ref.bands[level])
    bs = max(1, int(max_block) // max(per_particle, 1))
    if bs >= b:
        return _local_block(x, c, ref, level, rot, sh, shift_step, n_keep)
    parts = [_local_block(x[i:i + bs], c[i:i + bs], ref, level, rot[i:i + bs], sh[i:i + bs], shift_step, n_keep)
             for i in range(0, b, bs)]
    return tuple(torch.cat(t) for t in zip(*parts))


def _local_block(x: torch.Tensor, c: torch.Tensor, ref: _Reference, level: int, rot: torch.Tensor,
                 sh: torch.Tensor, shift_step: float, n_keep: int):
    """Refine candidates ``rot (B, C, 3, 3)``, ``sh (B, C, 2)`` (px) at one level.

    Returns the ``n_keep`` best ``(rot, shift, ncc)`` per particle.
    """
    band = ref.bands[level]
    idx = ref.sub[level]
    xb, cb = x[:, idx], c[:, idx]
    b, cands = rot.shape[:2]
    rots = local_grid(rot, ref.steps[level], 1)  # (B, C, 27, 3, 3)
    p = slice_band(ref.vft, rots, band)  # (B, C, 27, K)
    if shift_step > 0:
        shifts = sh[:, :, None, :] + shift_step * _SHIFT_OFFSETS[None, None]  # (B, C, 9, 2)
    else:
        shifts = sh[:, :, None, :]
    y = (xb * cb)[:, None, None, :] * origin_phases_band(shifts, band).conj()  # (B, C, S, K)
    cross = torch.einsum("bcsk,bcjk->bcsj", _as_real(y), _as_real(p))
    norm = torch.einsum("bk,bcjk->bcj", cb * cb, p.real**2 + p.imag**2).clamp_min(1e-30)
    xnorm = (xb.real**2 + xb.imag**2).sum(-1).clamp_min(1e-30)
    ncc = cross / torch.sqrt(norm * xnorm[:, None, None])[:, :, None, :]  # (B, C, S, 27)
    n_s, n_j = ncc.shape[2], ncc.shape[3]
    v, i = ncc.reshape(b, cands, n_s * n_j).max(dim=-1)  # best per candidate: (B, C)
    si, ji = i // n_j, i % n_j
    bi = torch.arange(b)[:, None].expand(b, cands)
    ci = torch.arange(cands)[None, :].expand(b, cands)
    new_rot, new_sh = rots[bi, ci, ji], shifts[bi, ci, si]
    order = _distinct_top(new_rot, v, n_keep, 1.5 * ref.steps[level])
    return (torch.gather(new_rot, 1, order[..., None, None].expand(-1, -1, 3, 3)),
            torch.gather(new_sh, 1, order[..., None].expand(-1, -1, 2)), torch.gather(v, 1, order))


def _distinct_top(rot: torch.Tensor, score: torch.Tensor, k: int, min_sep_deg: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices ``(B, k')`` of the best-scoring candidates
    that are at least ``min_sep_deg`` apart (falling back to the next best when fewer remain)."""
    b, m = score.shape
    k = min(k, m)
    order = score.argsort(dim=1, descending=True)
    r = torch.gather(rot, 1, order[..., None, None].expand(-1, -1, 3, 3))
    tr = torch.einsum("bmij,bnij->bmn", r, r)  # trace(Ra^T Rb)
    close = tr > 1.0 + 2.0 * math.cos(math.radians(min_sep_deg))  # (B, M, M)
    alive = torch.ones(b, m, dtype=torch.bool)
    chosen = []
    for _ in range(k):
        first = torch.where(alive.any(1), alive.float().argmax(1), torch.zeros(b, dtype=torch.long))
        chosen.append(first)
        alive = alive & ~close[torch.arange(b), first]
        alive[torch.arange(b), first] = False
    picked = torch.stack(chosen, 1)
    # particles whose candidates ran out repeat their best one: harmless duplicates
    return torch.gather(order, 1, picked)


def _init_local_reference(ref: "_Reference", volume: torch.Tensor, config: SearchConfig, pixel_size: float) -> None:
    """Like :class:`_Reference` but without the global grid (local refinement only)."""
    n = volume.shape[-1]
    ref.n = n
    ref.vft = prepare_volume_ft(volume.to(torch.float32), pad=config.pad)
    r_max = n / 2.0
    if config.max_resolution_angstrom is not None:
        r_max = min(r_max, n * pixel_size / float(config.max_resolution_angstrom))
    ref.steps = config.level_steps()
    radii = [max(2.0, min(r_max, config.band_factor / math.radians(s))) for s in ref.steps]
    ref.bands = [make_band(n, r) for r in radii]
    ref.full = make_band(n, max(radii))
    pos = {int(i): j for j, i in enumerate(ref.full.flat_index.tolist())}
    ref.sub = [torch.tensor([pos[int(i)] for i in b.flat_index.tolist()], dtype=torch.long) for b in ref.bands]
