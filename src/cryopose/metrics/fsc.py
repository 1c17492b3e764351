"""Fourier shell correlation (FSC) between two maps, resolution estimates and FSC plots.

Definition (as RELION's ``getFSC``, van Heel & Schatz, J. Struct. Biol. 151, 2005): for shells
``s = round(|k|)`` of one voxel width (``|k|`` in cycles per box, :mod:`cryopose.fourier`),

``FSC(s) = Re Σ_{k∈s} F1(k) F2*(k) / sqrt(Σ_{k∈s} |F1(k)|² · Σ_{k∈s} |F2(k)|²)``,

reported for ``s = 0 … n // 2`` at the frequency ``s / (n · pixel_size)`` cycles/Å (the last
shell is Nyquist for even ``n``; voxels in the corners of the cube, ``|k| > n / 2 + 0.5``,
belong to no shell). Resolutions are ``1 / frequency`` in Å at the first crossing of a
threshold (0.5, or 0.143 for half maps after Rosenthal & Henderson, J. Mol. Biol. 333, 2003).

This module depends on no training code (``metrics/`` rule), so any two maps can be compared.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "fourier_shell_correlation",
    "shell_index_rfft",
    "first_crossing",
    "resolution_at",
    "fsc_report",
    "report_from_curve",
    "plot_fsc",
]


def _as_volume(x, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float64))
    if t.ndim != 3 or len(set(t.shape)) != 1:
        raise ValueError(f"{name} must be a cube (n, n, n), got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def shell_index_rfft(n: int, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell index and multiplicity of every coefficient of ``torch.fft.rfftn`` of an ``n³`` map.

    Returns:
        ``(shell, multiplicity)``, each ``(n, n, n // 2 + 1)``: ``shell = round(|k|)`` (int64,
        ``|k|`` in cycles per box, the radius of :func:`cryopose.fourier.radial_index_3d`), and
        the number of coefficients of the full transform each one stands for (2 for
        ``0 < kx < n/2``, else 1), so sums over the half transform equal sums over the full one.
    """
    kz = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=torch.float64)
    kx = torch.arange(n // 2 + 1, device=device, dtype=torch.float64)
    r = torch.sqrt(kz[:, None, None] ** 2 + kz[None, :, None] ** 2 + kx[None, None, :] ** 2)
    shell = torch.round(r).long()
    mult = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64, device=device)
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    return shell, mult[None, None, :].expand(n, n, n // 2 + 1)


def fourier_shell_correlation(map1, map2, *, mask=None, pixel_size_angstrom: float = 1.0
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """FSC between two maps on one-voxel-wide shells.

    Args:
        map1, map2: ``(n, n, n)`` real maps (tensor or array), same shape, same pixel size.
        mask: Optional ``(n, n, n)`` real-space mask (soft masks allowed) multiplied into both
            maps before the transform.
        pixel_size_angstrom: Pixel size in Å, for the frequency axis (default 1: cycles/px).

    Returns:
        ``(freq_per_angstrom, fsc)``, each ``(n // 2 + 1,)`` float64: shell ``s`` at frequency
        ``s / (n · pixel_size)`` cycles/Å. A shell where either map has no power gets FSC 0.

    Raises:
        ValueError: If the maps (or the mask) are not cubes of the same shape.
    """
    a, b = _as_volume(map1, "map1"), _as_volume(map2, "map2")
    if a.shape != b.shape:
        raise ValueError(f"maps have different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    if mask is not None:
        m = _as_volume(mask, "mask")
        if m.shape != a.shape:
            raise ValueError(f"mask shape {tuple(m.shape)} differs from the maps' {tuple(a.shape)}")
        a, b = a * m, b * m
    n = a.shape[-1]
    fa, fb = torch.fft.rfftn(a), torch.fft.rfftn(b)  # origin phase is common to both: irrelevant
    shell, mult = shell_index_rfft(n, device=a.device)
    nshell = n // 2 + 1
    keep = shell < nshell
    s = shell[keep]
    w = mult[keep]
    cross = torch.zeros(nshell, dtype=torch.float64).index_add_(0, s, w * (fa * fb.conj()).real[keep])
    pa = torch.zeros(nshell, dtype=torch.float64).index_add_(0, s, w * fa.abs().square()[keep])
    pb = torch.zeros(nshell, dtype=torch.float64).index_add_(0, s, w * fb.abs().square()[keep])
    denom = torch.sqrt(pa * pb)
    fsc = torch.where(denom > 0, cross / torch.where(denom > 0, denom, torch.ones_like(denom)),
                      torch.zeros_like(denom))
    freq = torch.arange(nshell, dtype=torch.float64)  # shell s = 0 .. n // 2
    return freq / (n * float(pixel_size_angstrom)), fsc


def first_crossing(fsc, freq, threshold: float) -> tuple[float, bool]:
    """Frequency at which an FSC curve first falls below ``threshold``.

    Shell 0 (the DC term) is ignored. The crossing is linearly interpolated between the last
    shell at or above the threshold and the first one below it.

    Args:
        fsc: ``(S,)`` FSC values.
        freq: ``(S,)`` increasing frequencies (any unit).
        threshold: e.g. 0.5 or 0.143.

    Returns:
        ``(frequency, crossed)``: the interpolated frequency, and ``False`` (with the last
        frequency) if the curve never falls below the threshold.
    """
    f = np.asarray(fsc, dtype=np.float64).reshape(-1)
    q = np.asarray(freq, dtype=np.float64).reshape(-1)
    if f.shape != q.shape or f.size < 2:
        raise ValueError(f"fsc and freq must be 1D of the same length >= 2, got {f.shape} and {q.shape}")
    below = np.flatnonzero(f[1:] < threshold)
    if below.size == 0:
        return float(q[-1]), False
    i = int(below[0]) + 1  # first shell below; i - 1 is at or above (or the DC shell)
    f0, f1 = f[i - 1], f[i]
    t = 0.0 if f0 == f1 else (f0 - threshold) / (f0 - f1)
    return float(q[i - 1] + t * (q[i] - q[i - 1])), True


def resolution_at(fsc, freq, threshold: float) -> float:
    """Resolution in Å where the FSC first crosses ``threshold``.

    Args:
        fsc: ``(S,)`` FSC values (shell 0 = DC first).
        freq: ``(S,)`` frequencies in cycles/Å (as returned by :func:`fourier_shell_correlation`).
        threshold: e.g. 0.5 or 0.143.

    Returns:
        ``1 / f`` in Å at the linearly interpolated first crossing (shell 0 ignored). If the
        curve never falls below the threshold, the resolution of the last shell (Nyquist for
        even boxes) — :func:`first_crossing` says which case applies; :func:`fsc_report`
        records it.
    """
    f, _ = first_crossing(fsc, freq, threshold)
    return math.inf if f <= 0 else 1.0 / f


def fsc_report(map1, map2, pixel_size_angstrom: float, mask=None) -> dict:
    """FSC curve and resolutions of two maps as a JSON-ready dict.

    Args:
        map1, map2: ``(n, n, n)`` maps of the same size and pixel size.
        pixel_size_angstrom: Pixel size in Å.
        mask: Optional ``(n, n, n)`` real-space mask.

    Returns:
        ``{"resolution_fsc0p5_angstrom", "resolution_fsc0p143_angstrom",
        "fsc0p5_crossed", "fsc0p143_crossed", "nyquist_angstrom", "pixel_size_angstrom",
        "box_size", "masked", "fsc_curve": [{"frequency_per_angstrom", "fsc"}, ...]}``.
        A resolution whose threshold is never crossed is the last shell's (Nyquist for even
        boxes) and has ``..._crossed = False``: the true resolution is at least that good.

    Raises:
        ValueError: Shapes differ or are not cubic.
    """
    freq, fsc = fourier_shell_correlation(map1, map2, mask=mask, pixel_size_angstrom=pixel_size_angstrom)
    n = int(np.shape(map1)[-1])
    return report_from_curve(freq, fsc, pixel_size_angstrom, box_size=n, masked=mask is not None)


def report_from_curve(freq, fsc, pixel_size_angstrom: float, *, box_size: int, masked: bool = False) -> dict:
    """The dict of :func:`fsc_report` from an FSC curve already computed (same keys)."""
    freq = np.asarray(freq, dtype=np.float64)
    fsc = np.asarray(fsc, dtype=np.float64)
    out = {}
    for tag, thr in (("0p5", 0.5), ("0p143", 0.143)):
        f, crossed = first_crossing(fsc, freq, thr)
        out[f"resolution_fsc{tag}_angstrom"] = (1.0 / f) if f > 0 else math.inf
        out[f"fsc{tag}_crossed"] = bool(crossed)
    out["nyquist_angstrom"] = 2.0 * float(pixel_size_angstrom)
    out["pixel_size_angstrom"] = float(pixel_size_angstrom)
    out["box_size"] = int(box_size)
    out["masked"] = bool(masked)
    out["fsc_curve"] = [{"frequency_per_angstrom": float(q), "fsc": float(c)} for q, c in zip(freq, fsc)]
    return out


def plot_fsc(curves: dict, path, *, title: str | None = None, thresholds=(0.5, 0.143)) -> Path:
    """Plot FSC curves to an image file (matplotlib, Agg backend).

    Args:
        curves: ``{label: (freq_per_angstrom, fsc)}``; arrays or tensors of equal length per label.
        path: Output image path (``.png``, ``.pdf``, ``.svg``); written atomically.
        title: Optional title.
        thresholds: Horizontal dashed lines (with their values in the legend).

    The x axis is frequency in 1/Å with tick labels in Å (``1 / f``).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from ..io.atomic import atomic_path

    fig = Figure(figsize=(6.0, 4.0), dpi=120)
    ax = fig.add_subplot(111)
    fmax = 0.0
    for label, (freq, fsc) in curves.items():
        q = np.asarray(freq, dtype=np.float64)
        ax.plot(q, np.asarray(fsc, dtype=np.float64), label=str(label), lw=1.5)
        fmax = max(fmax, float(q.max()))
    for thr, style in zip(thresholds, ("--", ":", "-.")):
        ax.axhline(thr, color="grey", ls=style, lw=1, label=f"FSC = {thr:g}")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xlim(0.0, fmax if fmax > 0 else 1.0)
    ax.set_ylim(-0.1, 1.05)
    ticks = np.linspace(0.0, fmax, 6)[1:] if fmax > 0 else np.array([])
    ax.set_xticks(np.concatenate([[0.0], ticks]))
    ax.set_xticklabels(["∞"] + [f"{1.0 / t:.1f}" for t in ticks])
    ax.set_xlabel("resolution (Å)  [x axis linear in frequency, 1/Å]")
    ax.set_ylabel("FSC")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path
