"""Point-group symmetrisation of Fourier grids (RELION's ``BackProjector::symmetrise``), for the
groups whose operators map grid nodes onto grid nodes.

An image of pose ``R`` in a point group ``{S_g}`` stands for the ``G`` images of poses
``R S_g``. Inserting it at pose ``R S`` puts at node ``k`` what inserting it at ``R`` puts at
node ``S k`` (the slice of ``R S`` passes through ``Sᵀ`` of the slice of ``R``), when the
trilinear kernel at ``k − Sᵀ c`` equals the kernel at ``S k − c``: true for every ``S`` that is a
signed permutation of the axes (C2, C4, D2, D4 and O in RELION's frames). For these groups
:class:`~cryopose.reconstruction.backprojector.Backprojector` inserts each image once and sums
``D(S_g k)`` over the group when the grids are read: the same grids, ``G`` times less scatter.
RELION does it for every group, interpolating the grid for the others; here they (C3, D7, I…)
keep the ``G`` insertions, which are exact.
"""

from __future__ import annotations

import torch

__all__ = ["signed_permutations", "symmetrise_half_grids"]


def signed_permutations(operators: torch.Tensor) -> torch.Tensor | None:
    """The operators as ``(G, 3, 3)`` int64 when each is a signed permutation matrix (maps grid
    nodes onto grid nodes), else ``None``.

    Args:
        operators: ``(G, 3, 3)`` rotation matrices (:func:`cryopose.symmetry.symmetry_operators`).
    """
    rounded = torch.round(operators)
    if not torch.allclose(operators, rounded, atol=1e-6):
        return None
    ints = rounded.to(torch.int64)
    if not bool(((ints != 0).sum(-1) == 1).all()):
        return None
    return ints


def symmetrise_half_grids(d: torch.Tensor, w: torch.Tensor, operators: torch.Tensor, inside: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_g D(S_g k)`` and ``Σ_g W(S_g k)`` on Hermitian-completed half grids.

    Args:
        d: ``(N, N, N // 2 + 1)`` complex grid, axes ``(z, y, x)``, ``z`` and ``y`` centred
            (origin at ``N // 2``), ``x = 0 … N // 2``; the ``x = 0`` plane complete.
        w: The weights, same layout (real).
        operators: ``(G, 3, 3)`` int64 signed permutations (:func:`signed_permutations`),
            acting on ``(x, y, z)``.
        inside: ``(N, N, N // 2 + 1)`` bool, the nodes within the sphere ``|k| < N / 2``; the
            others are returned as zero.

    Returns:
        ``(D, W)`` summed over the group, new tensors. A node ``S_g k`` with ``x < 0`` is read as
        the conjugate of its Friedel mate ``−S_g k``.
    """
    size = d.shape[0]
    h, gx = size // 2, size // 2 + 1
    dev = d.device
    axes = [torch.arange(gx, device=dev).view(1, 1, gx),  # k_x, k_y, k_z as broadcastable views
            (torch.arange(size, device=dev) - h).view(1, size, 1),
            (torch.arange(size, device=dev) - h).view(size, 1, 1)]
    d_flat, w_flat = d.reshape(-1), w.reshape(-1)
    out_d, out_w = d.clone(), w.clone()
    slab = max(1, (1 << 22) // (size * gx))  # z planes per step: bounded temporaries
    for op in operators.tolist():
        if op == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]:
            continue
        for z0 in range(0, size, slab):
            ks = [axes[0], axes[1], axes[2][z0:z0 + slab]]
            # (S k)_i = sign_i · k_{j(i)}: one nonzero per row of S
            m = [sum(op[i][j] * ks[j] for j in range(3) if op[i][j]) for i in range(3)]
            flip = (m[0] < 0).expand(ks[2].shape[0], size, gx)
            sign = torch.where(flip, -1, 1)
            mx = (sign * m[0]).clamp(0, gx - 1)
            my, mz = (sign * m[1] + h).clamp(0, size - 1), (sign * m[2] + h).clamp(0, size - 1)
            lin = (mz * size + my) * gx + mx
            vals = d_flat[lin]
            out_d[z0:z0 + slab] += torch.where(flip, vals.conj(), vals)
            out_w[z0:z0 + slab] += w_flat[lin]
    # the corners beyond the sphere read clamped nodes: zero them as the input's
    return out_d.masked_fill_(~inside, 0), out_w.masked_fill_(~inside, 0)
