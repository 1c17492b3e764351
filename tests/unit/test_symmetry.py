"""Point groups in RELION's conventions: orders, closure, agreement with RELION 3.1 binaries."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from cryopose import rotations as rt
from cryopose import symmetry as sy

ORDERS = {"C1": 1, "C2": 2, "C4": 4, "C7": 7, "D1": 2, "D2": 4, "D3": 6, "D7": 14, "T": 12, "O": 24,
          "I": 60, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


@pytest.mark.parametrize("symbol,order", sorted(ORDERS.items()))
def test_order_closure_and_rotations(symbol, order):
    ops = sy.symmetry_operators(symbol)
    assert ops.shape == (order, 3, 3) and ops.dtype == torch.float64
    assert sy.symmetry_order(symbol) == order
    assert torch.equal(ops[0], torch.eye(3, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(ops.transpose(-1, -2) @ ops, eye.expand_as(ops), atol=1e-12)
    assert torch.allclose(torch.linalg.det(ops), torch.ones(order, dtype=torch.float64), atol=1e-12)
    f = ops.reshape(order, 9)

    def dist(a, b):  # exact pairwise distances (torch.cdist loses ~1e-8 to cancellation)
        return (a[:, None] - b[None]).norm(dim=-1)

    # distinct elements
    assert (dist(f, f) + 10 * torch.eye(order, dtype=torch.float64)).min() > 1e-3
    # closed under products and inverses
    prods = (ops[:, None] @ ops[None]).reshape(-1, 9)
    assert dist(prods, f).min(dim=1).values.max() < 1e-10
    assert dist(ops.transpose(-1, -2).reshape(-1, 9), f).min(dim=1).values.max() < 1e-10


def test_case_insensitive_and_I_is_I2():
    assert torch.equal(sy.symmetry_operators("d2"), sy.symmetry_operators("D2"))
    assert torch.equal(sy.symmetry_operators(" i "), sy.symmetry_operators("I2"))
    assert sy.canonical_symbol("c4") == "C4"


@pytest.mark.parametrize("bad", ["X3", "C0", "D0", "", "C4v", "I5", "Q", None, "TT"])
def test_unknown_symbol_error_names_it_and_lists_valid(bad):
    with pytest.raises(sy.SymmetryError) as exc:
        sy.symmetry_operators(bad)
    msg = str(exc.value)
    assert repr(bad) in msg and "C1" in msg and "Dn" in msg and "I4" in msg
    assert isinstance(exc.value, ValueError)


def test_axes_follow_relion():
    c5 = sy.symmetry_operators("C5")
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(c5 @ ez, ez.expand(5, 3))  # Cn about z
    d3 = sy.symmetry_operators("D3")
    two_fold_x = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    assert (d3 - two_fold_x).abs().amax(dim=(1, 2)).min() < 1e-12  # Dn: extra 2-fold about x
    o = sy.symmetry_operators("O")
    four_z = rt.axis_angle_to_rotmat(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    assert (o - four_z).abs().amax(dim=(1, 2)).min() < 1e-12
    i2 = sy.symmetry_operators("I2")
    for axis in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]):  # I2: 2-folds on x, y, z
        r = rt.axis_angle_to_rotmat(math.pi * torch.tensor(axis, dtype=torch.float64))
        assert (i2 - r).abs().amax(dim=(1, 2)).min() < 1e-12


def test_expand_by_symmetry():
    r = rt.random_rotations(4, torch.Generator().manual_seed(0))
    e = sy.expand_by_symmetry(r, "D2")
    assert e.shape == (4, 4, 3, 3)
    assert torch.allclose(e[:, 2], r @ sy.symmetry_operators("D2")[2])


# ---------------------------------------------------------------- asymmetric unit


@pytest.mark.parametrize("symbol", ["C1", "C3", "D2", "D5", "T", "O", "I"])
def test_asymmetric_unit_is_a_fundamental_domain(symbol):
    g = torch.Generator().manual_seed(1)
    d = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    order = sy.symmetry_order(symbol)
    mask = sy.asymmetric_unit_mask(d, symbol)
    assert mask.shape == (20000,) and mask.dtype == torch.bool
    frac = mask.double().mean().item()
    assert abs(frac - 1 / order) < 4 * math.sqrt(1 / order / 20000) + 1e-12
    # every orbit {S d} has exactly one member in the unit (generic directions: no ties)
    images = torch.einsum("gij,nj->ngi", sy.symmetry_operators(symbol), d[:500])
    assert (sy.asymmetric_unit_mask(images, symbol).sum(dim=1) == 1).all()


def test_asymmetric_unit_restricted_grid_covers_sphere():
    dirs, _ = rt.sphere_grid(7.5)
    for symbol in ("C4", "D2", "O"):
        keep = dirs[sy.asymmetric_unit_mask(dirs, symbol)]
        order = sy.symmetry_order(symbol)
        assert abs(len(keep) - len(dirs) / order) < 0.15 * len(dirs) / order
        images = torch.einsum("gij,nj->gni", sy.symmetry_operators(symbol), keep).reshape(-1, 3)
        nearest = torch.rad2deg(torch.arccos((dirs @ images.T).max(dim=1).values.clamp(-1, 1)))
        assert nearest.max() < 7.5  # every grid direction is near an image of a kept one


def test_reference_on_axis_raises():
    with pytest.raises(ValueError, match="axis"):
        sy.asymmetric_unit_mask(torch.eye(3, dtype=torch.float64), "C4", reference_direction=(0, 0, 1))


# ---------------------------------------------------------------- RELION oracle


def _require(binary):
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} not on PATH: install RELION 3.1 or deselect with -m 'not relion'")


def _relion_printed_ops(symbol):
    _require("relion_refine")
    out = subprocess.run(["relion_refine", "--sym", symbol, "--print_symmetry_ops"],
                         capture_output=True, text=True, timeout=60).stdout
    lines = out.splitlines()
    mats = [[[float(v) for v in lines[i + k].split()] for k in (1, 2, 3)]
            for i, line in enumerate(lines) if re.match(r"\s*R\(\d+\)=", line)]
    return np.array(mats)


@pytest.mark.relion
@pytest.mark.parametrize("symbol", ["C4", "C7", "D2", "D3", "T", "O", "I", "I1", "I3", "I4"])
def test_operator_sets_match_relion_print_symmetry_ops(symbol):
    relion = _relion_printed_ops(symbol)
    ours = sy.symmetry_operators(symbol).numpy()
    assert relion.shape == ours.shape
    dist = np.abs(relion[:, None] - ours[None]).max(axis=(2, 3))  # RELION prints 5 digits
    assert dist.min(axis=0).max() < 1e-4 and dist.min(axis=1).max() < 1e-4


@pytest.mark.relion
def test_relion_settings_differ():
    """The oracle can fail: RELION's I1 is not our I2, nor its T our T rotated about z."""
    relion_i1 = _relion_printed_ops("I1")
    ours_i2 = sy.symmetry_operators("I2").numpy()
    assert np.abs(relion_i1[:, None] - ours_i2[None]).max(axis=(2, 3)).min(axis=0).max() > 0.1


def _blob_map(n=32, seed=0):
    c = n // 2
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:n, :n, :n] - c
    vol = np.zeros((n, n, n))
    for _ in range(12):
        p = rng.uniform(-8, 8, 3)  # (x, y, z)
        vol += rng.uniform(0.5, 1.5) * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2 + (zz - p[2]) ** 2) / (2 * 1.5**2))
    return vol


def _apply(vol, s):
    """V'(x) = V(S x) for a (z, y, x)-indexed volume with origin n // 2, (x, y, z) vectors."""
    from scipy import ndimage

    c = np.full(3, vol.shape[0] // 2, dtype=float)
    p = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    m = p @ s @ p
    return ndimage.affine_transform(vol, m, offset=c - m @ c, order=3, mode="constant")


def _corr(a, b):
    n = a.shape[0]
    zz, yy, xx = np.mgrid[:n, :n, :n] - n // 2
    mask = xx**2 + yy**2 + zz**2 < (n // 2 - 3) ** 2
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.relion
@pytest.mark.parametrize("symbol,control,max_control", [("D2", "C4", 0.6), ("T", None, 0.8), ("I", "I1", 0.98)])
def test_relion_symmetrised_map_is_invariant(tmp_path, symbol, control, max_control):
    """relion_image_handler --sym X symmetrises a map; every one of our operators leaves it
    invariant (V(S x) = V(x)), and operators of another setting do not."""
    import mrcfile

    _require("relion_image_handler")
    vol = _blob_map()
    with mrcfile.new(tmp_path / "in.mrc") as m:
        m.set_data(vol.astype(np.float32))
        m.voxel_size = 1.0
    subprocess.run(["relion_image_handler", "--i", str(tmp_path / "in.mrc"), "--o", str(tmp_path / "sym.mrc"),
                    "--sym", symbol], check=True, capture_output=True, timeout=120)
    v = mrcfile.read(tmp_path / "sym.mrc").astype(np.float64)
    assert _corr(vol, v) < 0.7  # RELION did change the map
    ours = [_corr(v, _apply(v, s)) for s in sy.symmetry_operators(symbol).numpy()]
    assert min(ours) > 0.995
    if control is not None:
        ctrl_ops = sy.symmetry_operators(control).numpy()
    else:  # the same group with x and z swapped: a wrong axis convention
        q = np.eye(3)[::-1]
        ctrl_ops = [q @ s @ q for s in sy.symmetry_operators(symbol).numpy()]
    assert min(_corr(v, _apply(v, s)) for s in ctrl_ops) < max_control


def test_mean_rotation_modulo_averages_across_symmetry_mates():
    """Four noisy estimates of each pose, each given as an arbitrary D2 mate, average to a pose
    closer to the truth than the estimates themselves; the mates chosen do not change the mean."""
    g = torch.Generator().manual_seed(3)
    truth = rt.random_rotations(50, generator=g)
    ops = sy.symmetry_operators("D2")
    noise = rt.axis_angle_to_rotmat(torch.randn(4, 50, 3, generator=g, dtype=torch.float64) * math.radians(5))
    est = noise @ truth
    pick = torch.randint(0, 4, (4, 50), generator=g)
    mean = sy.mean_rotation_modulo(est @ ops[pick], "D2")
    from cryopose.metrics.pose_error import symmetry_aware_errors

    err_mean = symmetry_aware_errors(mean, truth, symmetry="D2")
    err_one = symmetry_aware_errors(est[0], truth, symmetry="D2")
    assert float(err_mean.median()) < 0.75 * float(err_one.median())
    same = symmetry_aware_errors(mean, sy.mean_rotation_modulo(est, "C1"), symmetry="D2")
    assert float(same.max()) < 1e-6
    # in C1 the mates are not equivalent: the mean of far-apart estimates is not the truth
    assert float(rt.geodesic_distance_deg(sy.mean_rotation_modulo(est @ ops[pick], "C1"), truth).median()) > 20
    with pytest.raises(ValueError, match="K, N, 3, 3"):
        sy.mean_rotation_modulo(est[0], "D2")
