"""Ground-truth CTF parameters for simulated particles (RELION/CTFFIND conventions).

Three sources, one per data set:

* a uniform defocus range ``[min, max]`` Å (``--defocus-range``), optionally astigmatic;
* a list of defocus values (``--defocus-values``, µm on the command line, Å here), the
  particles split evenly between them (counts differ by at most one) in a random order — the
  design of the in-plane latent-space experiments;
* rows drawn (uniformly, with replacement) from a cryoDRGN-style CTF table
  ``[box, Å/px, dfU Å, dfV Å, dfAng °, kV, Cs mm, amp. contrast, phase shift °]``
  (``cryodrgn parse_ctf_*`` output saved as ``.npy``, e.g. EMPIAR-10028's, or a ``.star`` or
  ``.csv``: :func:`cryopose.simulate.ctf_table.load_ctf_table`, which never unpickles), which gives
  defocus, astigmatism, voltage, Cs, amplitude contrast and phase shift per particle. The
  table's box and pixel columns are ignored (defocus is physical, in Å).

Astigmatism ``a`` (Å) splits the mean defocus ``Δ`` into ``defocus_u = Δ + a/2`` and
``defocus_v = Δ − a/2`` with an angle uniform in [0°, 180°); rows with ``dfU < dfV`` are put in
RELION's order (``u >= v``) by swapping them and adding 90° to the angle, which is the same CTF.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ctf import CTFParams
from ..errors import UserError
from .ctf_table import load_ctf_table

__all__ = ["load_ctf_table", "sample_ctf", "split_evenly"]


def split_evenly(n: int, n_groups: int, *, generator: torch.Generator) -> np.ndarray:
    """Group index of each of ``n`` items, groups as equal as possible, in a random order.

    Returns:
        int64 ``(n,)`` with values in ``0 .. n_groups-1``; group ``g`` has ``n // n_groups``
        or ``n // n_groups + 1`` members (the first ``n % n_groups`` groups get the extra one).
    """
    groups = np.repeat(np.arange(n_groups), [n // n_groups + (g < n % n_groups) for g in range(n_groups)])
    perm = torch.randperm(n, generator=generator).numpy()
    return groups[perm].astype(np.int64)


def _astigmatic(mean_df: torch.Tensor, astigmatism: float, generator: torch.Generator):
    angle = torch.rand(mean_df.shape[0], generator=generator, dtype=torch.float64) * 180.0
    return mean_df + astigmatism / 2, mean_df - astigmatism / 2, angle


def sample_ctf(n: int, *, generator: torch.Generator,
               defocus_range_angstrom: tuple[float, float] = (10000.0, 25000.0),
               defocus_values_angstrom: tuple[float, ...] | None = None,
               ctf_table: np.ndarray | None = None,
               astigmatism_angstrom: float = 0.0,
               voltage_kv: float = 300.0, spherical_aberration_mm: float = 2.7,
               amplitude_contrast: float = 0.1, phase_shift_deg: float = 0.0,
               bfactor_angstrom2: float = 0.0) -> tuple[CTFParams, np.ndarray | None]:
    """Draw per-particle CTF parameters (see the module docstring for the three sources).

    Precedence: ``ctf_table``, then ``defocus_values_angstrom``, then the range.

    Args:
        n: Number of particles.
        generator: Source of randomness.
        defocus_range_angstrom: ``(min, max)`` mean defocus in Å (underfocus positive), uniform.
        defocus_values_angstrom: Explicit mean defocus values in Å, particles split evenly.
        ctf_table: ``(M, 9)`` cryoDRGN table (:func:`load_ctf_table`).
        astigmatism_angstrom: ``defocus_u − defocus_v`` in Å (>= 0) for range/values sampling.
        voltage_kv, spherical_aberration_mm, amplitude_contrast, phase_shift_deg: Microscope
            constants for range/values sampling (a table gives its own).
        bfactor_angstrom2: CTF B-factor envelope (Å²) for every particle.

    Returns:
        ``(ctf, group)``: :class:`~cryopose.ctf.CTFParams` of ``n`` particles, and for
        ``defocus_values_angstrom`` the int64 index of each particle's value (else ``None``).

    Raises:
        UserError: Empty or non-finite range, ``min > max``, negative defocus values or
            astigmatism.
    """
    group = None
    astig = float(astigmatism_angstrom)
    if not math.isfinite(astig) or astig < 0:
        raise UserError(f"astigmatism must be >= 0 Å, got {astigmatism_angstrom}")
    if ctf_table is not None:
        table = np.asarray(ctf_table, dtype=np.float64)
        rows = torch.randint(0, table.shape[0], (n,), generator=generator).numpy()
        t = table[rows]
        du, dv, ang = t[:, 2].copy(), t[:, 3].copy(), t[:, 4].copy()
        swap = du < dv
        du[swap], dv[swap] = t[swap, 3], t[swap, 2]
        ang[swap] = ang[swap] + 90.0
        return CTFParams.create(defocus_u_angstrom=du, defocus_v_angstrom=dv, defocus_angle_deg=ang,
                                voltage_kv=t[:, 5], spherical_aberration_mm=t[:, 6],
                                amplitude_contrast=t[:, 7], phase_shift_deg=t[:, 8],
                                bfactor_angstrom2=bfactor_angstrom2), None
    if defocus_values_angstrom is not None:
        values = np.asarray(defocus_values_angstrom, dtype=np.float64).reshape(-1)
        if values.size == 0 or not np.isfinite(values).all() or (values < 0).any():
            raise UserError(f"defocus values must be a non-empty list of non-negative numbers, got {list(values)}")
        group = split_evenly(n, values.size, generator=generator)
        mean_df = torch.from_numpy(values[group])
    else:
        lo, hi = (float(v) for v in defocus_range_angstrom)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise UserError(f"defocus range must be finite, got {lo} {hi}")
        if lo > hi:
            raise UserError(f"defocus range minimum {lo:g} Å is larger than its maximum {hi:g} Å")
        if lo < 0:
            raise UserError(f"defocus must be >= 0 Å (underfocus positive), got minimum {lo:g} Å")
        mean_df = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    du, dv, ang = _astigmatic(mean_df, astig, generator)
    return CTFParams.create(defocus_u_angstrom=du.numpy(), defocus_v_angstrom=dv.numpy(),
                            defocus_angle_deg=ang.numpy(), voltage_kv=voltage_kv,
                            spherical_aberration_mm=spherical_aberration_mm,
                            amplitude_contrast=amplitude_contrast, phase_shift_deg=phase_shift_deg,
                            bfactor_angstrom2=bfactor_angstrom2), group
