"""Figures of an ab initio run (matplotlib, Agg backend, written atomically as PNG).

Each function takes plain arrays/tensors and an output path and returns the path: the loss
curve, the angular distribution of viewing directions, the central slices of a map, and
particle images next to the projections of the map at their inferred poses. (The half-map
FSC plot is :func:`cryopose.metrics.fsc.plot_fsc`.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["plot_loss_curve", "plot_angular_distribution", "plot_noise_spectrum", "plot_central_slices",
           "plot_image_pairs"]


def _figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110)


def _save(fig, path) -> Path:
    from ..io.atomic import atomic_path

    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_loss_curve(epochs, losses, radii, path) -> Path:
    """Training loss (left axis) and frequency-marching radius (right axis) against epoch.

    Args:
        epochs: ``(T,)`` fractional epochs of the logged points.
        losses: ``(T,)`` mean loss over the last logged steps.
        radii: ``(T,)`` loss radius in cycles per box.
        path: Output PNG.
    """
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot(111)
    ax.plot(np.asarray(epochs), np.asarray(losses), color="C0", lw=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean squared Fourier residual)", color="C0")
    ax2 = ax.twinx()
    ax2.plot(np.asarray(epochs), np.asarray(radii), color="C1", lw=1.0, ls="--")
    ax2.set_ylabel("loss radius (cycles / box)", color="C1")
    ax.grid(alpha=0.3)
    ax.set_title("training loss and frequency marching")
    return _save(fig, path)


def plot_angular_distribution(rotmats, path, *, title: str = "viewing directions") -> Path:
    """2D histogram of viewing directions ``d = Rᵀ e_z`` as RELION ``(rot, tilt)``.

    Args:
        rotmats: ``(N, 3, 3)`` poses.
        path: Output PNG.
    """
    r = torch.as_tensor(rotmats).double()
    d = r[:, 2, :].numpy()  # third row = viewing direction
    rot = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    tilt = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot(111)
    # equal-area bins: uniform in cos(tilt)
    edges_t = np.degrees(np.arccos(np.linspace(1, -1, 19)))
    h, _, _ = np.histogram2d(rot, tilt, bins=[np.linspace(-180, 180, 37), edges_t])
    ax.pcolormesh(np.linspace(-180, 180, 37), edges_t, h.T, cmap="viridis", shading="flat")
    ax.set_xlabel("rot (°)")
    ax.set_ylabel("tilt (°)")
    ax.invert_yaxis()
    ax.set_title(f"{title} (equal-area bins, N = {len(rot)})")
    return _save(fig, path)


def plot_noise_spectrum(frequency_per_angstrom, power, path, *, title: str = "noise power spectrum") -> Path:
    """Radial noise power against spatial frequency (log scale).

    Args:
        frequency_per_angstrom: ``(S,)`` shell frequencies in Å⁻¹.
        power: ``(S,)`` power per shell (any unit; white noise is flat).
        path: Output PNG.
    """
    f = np.asarray(frequency_per_angstrom, dtype=float)
    p = np.asarray(power, dtype=float)
    fig = _figure(5.0, 3.2)
    ax = fig.add_subplot(111)
    ax.semilogy(f[1:], p[1:], "-o", ms=2)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("power")
    ax.set_title(title)
    return _save(fig, path)


def plot_central_slices(volume, path, *, title: str = "central slices") -> Path:
    """Central ``z``, ``y`` and ``x`` sections of a map ``(n, n, n)`` (``(z, y, x)``)."""
    v = torch.as_tensor(volume).float().numpy()
    c = v.shape[0] // 2
    fig = _figure(7.5, 2.8)
    for i, (img, lab) in enumerate(((v[c], "z = n/2 (x→, y↓)"), (v[:, c], "y = n/2 (x→, z↓)"),
                                    (v[:, :, c], "x = n/2 (y→, z↓)"))):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(img, cmap="gray", origin="upper")
        ax.set_title(lab, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_image_pairs(images, projections, path, *, title: str = "particles (top) and projections at their poses (bottom)") -> Path:
    """Particles next to the projections of the map at their inferred poses.

    Args:
        images: ``(K, n, n)`` particle images.
        projections: ``(K, n, n)`` projections (same order).
        path: Output PNG.
    """
    a = torch.as_tensor(images).float().numpy()
    b = torch.as_tensor(projections).float().numpy()
    k = a.shape[0]
    fig = _figure(1.3 * k, 2.9)
    for i in range(k):
        for row, arr in enumerate((a, b)):
            ax = fig.add_subplot(2, k, row * k + i + 1)
            ax.imshow(arr[i], cmap="gray", origin="upper")
            ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
