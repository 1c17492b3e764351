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

__all__ = ["plot_loss_curve", "plot_angular_distribution", "asymmetric_unit_map", "plot_noise_spectrum", "plot_central_slices",
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


def asymmetric_unit_map(symmetry: str, rot_deg, tilt_deg) -> np.ndarray:
    """Which ``(rot, tilt)`` viewing directions lie in the asymmetric unit of a point group.

    The unit is :func:`cryopose.symmetry.asymmetric_unit_mask`'s (the cell of the sphere
    nearest its reference direction), the one :func:`cryopose.symmetry.asymmetric_unit_mates`
    maps poses into; its area is ``1 / |G|`` of the sphere.

    Args:
        symmetry: Point-group symbol (``C1``, ``C4``, ``D2``, ``O``, ...).
        rot_deg: ``(A,)`` RELION rot angles in degrees.
        tilt_deg: ``(B,)`` RELION tilt angles in degrees.

    Returns:
        ``(B, A)`` boolean array: ``True`` where the direction
        ``(sin tilt cos rot, sin tilt sin rot, cos tilt)`` is in the unit.

    Raises:
        SymmetryError: For an unknown symbol.
    """
    from ..symmetry import asymmetric_unit_mask

    rot = np.radians(np.asarray(rot_deg, dtype=float))[None, :]
    tilt = np.radians(np.asarray(tilt_deg, dtype=float))[:, None]
    d = np.stack(np.broadcast_arrays(np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)), -1)
    return asymmetric_unit_mask(torch.from_numpy(d), symmetry, atol=1e-6).numpy()  # as asymmetric_unit_mates


def plot_angular_distribution(rotmats, path, *, title: str = "viewing directions", symmetry: str = "C1") -> Path:
    """2D histogram of viewing directions ``d = Rᵀ e_z`` as RELION ``(rot, tilt)``, with the
    asymmetric unit of ``symmetry`` outlined (white line) and the rest of the sphere greyed.

    Args:
        rotmats: ``(N, 3, 3)`` poses (give the asymmetric-unit mates,
            :func:`cryopose.symmetry.asymmetric_unit_mates`, to see them inside the unit).
        path: Output PNG.
        title: Title (the count and the symmetry are added).
        symmetry: Point group whose asymmetric unit is drawn (``C1``: the whole sphere).

    Raises:
        SymmetryError: For an unknown symbol.
    """
    from ..symmetry import canonical_symbol

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
    sym = canonical_symbol(symmetry)
    if sym != "C1":
        grid_rot, grid_tilt = np.linspace(-180, 180, 361), np.linspace(0, 180, 181)
        inside = asymmetric_unit_map(sym, grid_rot, grid_tilt)
        ax.contourf(grid_rot, grid_tilt, inside.astype(float), levels=[-0.5, 0.5], colors=["0.5"], alpha=0.6)
        ax.contour(grid_rot, grid_tilt, inside.astype(float), levels=[0.5], colors="white", linewidths=1.2)
    ax.set_xlabel("rot (°)")
    ax.set_ylabel("tilt (°)")
    ax.set_xlim(-180, 180)
    ax.set_ylim(0, 180)
    ax.invert_yaxis()
    unit = "whole sphere (C1)" if sym == "C1" else f"{sym} asymmetric unit outlined"
    ax.set_title(f"{title} (equal-area bins, N = {len(rot)}; {unit})", fontsize=9)
    return _save(fig, path)


def plot_noise_spectrum(frequency_per_angstrom, power, path, *, title: str = "noise power spectrum",
                        groups: dict | None = None) -> Path:
    """Radial noise power against spatial frequency (log scale).

    Args:
        frequency_per_angstrom: ``(S,)`` shell frequencies in Å⁻¹.
        power: ``(S,)`` power per shell (any unit; white noise is flat).
        path: Output PNG.
        groups: Optional ``{label: (S,) power}`` drawn beside it (e.g. per optics group).
    """
    f = np.asarray(frequency_per_angstrom, dtype=float)
    p = np.asarray(power, dtype=float)
    fig = _figure(5.0, 3.2)
    ax = fig.add_subplot(111)
    ax.semilogy(f[1:], p[1:], "-o", ms=2, label="all particles" if groups else None)
    for label, gp in (groups or {}).items():
        ax.semilogy(f[1:], np.asarray(gp, dtype=float)[1:], "-", lw=1, label=str(label))
    if groups:
        ax.legend(fontsize=7)
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
