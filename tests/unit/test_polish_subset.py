"""Global iterations on a subset before the polishing rounds
(:mod:`cryopose.pipelines.polish_subset`): poses far off come back over the iterations, the
iterations stop once the poses stop moving, and :func:`polish_rounds` carries the subset's
poses, origins and map into its rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blobs import blob_volume  # tests/unit/blobs.py
from cryopose.ctf import CTFParams, compute_ctf
from cryopose.data.dataset import TensorStack
from cryopose.io.particles import ParticleMetadata
from cryopose.projection import project
from cryopose.reconstruction import reconstruct
from cryopose.rotations import geodesic_distance_deg, random_rotations, relion_euler_to_rotmat

N = 24
APIX = 6.0

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _particles(n: int, seed: int):
    """Noise-free CTF-modulated projections (origins within ±2 px) of an asymmetric blob volume."""
    g = torch.Generator().manual_seed(seed)
    vol = blob_volume(g, N)
    rot = random_rotations(n, generator=g)
    du = 12000 + 8000 * torch.rand(n, generator=g, dtype=torch.float64)
    ctf = CTFParams.create(defocus_u_angstrom=du, defocus_v_angstrom=du - 300, defocus_angle_deg=30.0)
    sh = torch.randint(-2, 3, (n, 2), generator=g).double()
    img = project(vol, rot, ctf=compute_ctf(ctf, N, APIX).double(), shifts_px=sh).float()
    meta = ParticleMetadata(pixel_size_angstrom=APIX, box_size=N, ctf=ctf, shifts_angstrom=sh * APIX)
    # a third of the poses 90° off (beyond any local search), the rest a few degrees off
    kick = relion_euler_to_rotmat(torch.randn(n, 3, generator=g, dtype=torch.float64) * 2.0)
    start = rot @ kick
    start[: n // 3] = start[: n // 3] @ relion_euler_to_rotmat(torch.tensor([[0.0, 90.0, 0.0]], dtype=torch.float64))
    return TensorStack(img), meta, rot, start.float()


def _reconstruct(images, meta, rot, sh, last=False):
    posed = meta.replace(rotmats=rot.float(), shifts_angstrom=sh if sh is not None else meta.shifts_angstrom)
    return reconstruct(images, posed, symmetry="C1", progress=False, generator=torch.Generator().manual_seed(0),
                       threads=1)


def test_subset_iterations_bring_far_poses_back_and_stop_when_they_stop_moving(monkeypatch):
    import cryopose.pipelines.polish_subset as ps

    monkeypatch.setattr(ps, "SUBSET_PARTICLES", 48)
    images, meta, rot, start = _particles(72, seed=3)
    out = ps.subset_iterations(images, meta, start, meta.shifts_angstrom, working_pixel_angstrom=APIX, symmetry="C1",
                               refine_to_deg=3.75, estimate_shifts=False, max_iterations=6, reconstruct=_reconstruct)
    idx = out.indices
    assert idx.shape == (48,) and np.all(np.diff(idx) > 0) and idx.max() < 72
    before = geodesic_distance_deg(start[torch.as_tensor(idx)].double(), rot[torch.as_tensor(idx)])
    after = geodesic_distance_deg(out.rotmats.double(), rot[torch.as_tensor(idx)])
    assert float((before > 40).double().mean()) > 0.2
    assert float(after.median()) < 3.0 and float(after.max()) < 10.0
    # the first iteration moved the far poses, the last moved (almost) none: converged, before the cap
    assert out.moved_fractions[0] > 0.2 and out.converged
    assert out.moved_fractions[-1] < ps.CONVERGED_MOVED_FRACTION and len(out.moved_fractions) < 6
    assert torch.equal(out.shifts_angstrom, meta.shifts_angstrom[torch.as_tensor(idx)].float())  # not estimated
    assert out.reconstruction.volume.shape == (N, N, N)
    with pytest.raises(ValueError, match="max_iterations"):
        ps.subset_iterations(images, meta, start, None, working_pixel_angstrom=APIX, symmetry="C1", refine_to_deg=3.75,
                             estimate_shifts=False, max_iterations=0, reconstruct=_reconstruct)


def test_polish_from_subset_starts_the_rounds_from_the_subset_iterations(monkeypatch):
    """After the subset iterations, one global round against their map brings every particle's
    pose back, those outside the subset included; the outcome records the iterations and their
    time. Without them (``subset_iterations=0``) the same round leaves more poses far off."""
    import cryopose.pipelines.polish as polish
    import cryopose.pipelines.polish_subset as ps

    monkeypatch.setattr(ps, "SUBSET_PARTICLES", 48)
    images, meta, rot, start = _particles(72, seed=5)
    blurred = _reconstruct(images, meta, start, None)  # the map of the starting poses
    schedule = polish.PolishSchedule(rounds=1, global_rounds=1, start_step_deg=3.75, final_step_deg=0.9375,
                                     estimate_shifts=False, working_pixel_angstrom=APIX)
    outcomes = {k: ps.polish_from_subset(images, meta, start, meta.shifts_angstrom, blurred, schedule=schedule,
                                         max_iterations=k, reconstruct=_reconstruct) for k in (0, 6)}
    err = {k: geodesic_distance_deg(o.rotmats.double(), rot) for k, o in outcomes.items()}
    far = {k: float((e > 10).double().mean()) for k, e in err.items()}
    assert far[0] > 0.1 and far[6] < 0.05  # the global round alone leaves 15 % far off here
    assert float(err[6].median()) < min(4.0, float(err[0].median()))  # refined to 3.75° steps
    assert outcomes[0].subset_moved == () and "subset" not in outcomes[0].seconds
    assert len(outcomes[6].subset_moved) >= 1 and len(outcomes[6].seconds["subset"]) == 1
    assert set(outcomes[6].seconds) == {"subset", "global", "reconstruct"}
    assert outcomes[6].subset_start is None  # the poses cover the sphere: no marginal start


def test_iterations_stop_when_the_moved_fraction_stops_falling():
    """The stop rule on two measured sequences of moved fractions: realistic β-gal in D2 (seed 1)
    falls at every iteration and runs until it converges; the demo's D2 particles searched in C1
    stall at 6–9 % (poses jumping between symmetry mates) and stop after 11 iterations, not 20."""
    from cryopose.pipelines.polish_subset import PATIENCE, _stalled

    seed1 = [0.635, 0.3307, 0.1607, 0.087, 0.0627, 0.0577, 0.0413, 0.02, 0.0087]
    assert not any(_stalled(seed1[:k]) for k in range(1, len(seed1) + 1))
    demo = [0.7467, 0.192, 0.1113, 0.0897, 0.0903, 0.0733, 0.0733, 0.066, 0.0597, 0.0603, 0.0733, 0.082]
    stops = [k for k in range(1, len(demo) + 1) if _stalled(demo[:k])]
    assert PATIENCE == 2 and stops[0] == 11


def test_a_run_whose_subset_iterations_did_not_settle_is_told_so():
    """``summary.json``'s warning: none when the iterations converged or did not run; when they
    stalled (the demo's D2 particles in C1), the share still moving and what to check."""
    from cryopose.pipelines.polish_subset import subset_warning

    assert subset_warning([0.635, 0.0087], "D2") is None and subset_warning([], "C1") is None
    assert subset_warning(None, "C1") is None
    msg = subset_warning([0.7467, 0.192, 0.0897, 0.0903, 0.0903], "C1")
    assert "9.0 %" in msg and "after 5" in msg and "more symmetry than C1" in msg and "--symmetry" in msg


def test_a_collapsed_start_gives_way_to_the_marginal_start(monkeypatch):
    """Every starting pose within a few degrees of one view (an encoder that collapsed): the
    subset iterations from it keep a wrong map; the marginal start (a map found from random
    poses) fits the particles better, is kept, and the round brings the poses back."""
    import cryopose.pipelines.polish as polish
    import cryopose.pipelines.polish_subset as ps

    monkeypatch.setattr(ps, "SUBSET_PARTICLES", 300)
    images, meta, rot, _ = _particles(360, seed=3)
    g = torch.Generator().manual_seed(0)
    collapsed = (relion_euler_to_rotmat(torch.randn(360, 3, generator=g, dtype=torch.float64) * 5.0)).float()
    schedule = polish.PolishSchedule(rounds=1, global_rounds=1, start_step_deg=3.75, final_step_deg=0.9375,
                                     estimate_shifts=False, working_pixel_angstrom=APIX)
    blurred = _reconstruct(images, meta, collapsed, None)
    out = ps.polish_from_subset(images, meta, collapsed, meta.shifts_angstrom, blurred, schedule=schedule,
                                max_iterations=4, reconstruct=_reconstruct)
    choice = out.subset_start
    assert choice["kept"] == "marginal" and choice["fit"]["marginal"] > choice["fit"]["given"]
    assert choice["marginal_max_weights"][-1] > 0.8 and choice["marginal_seconds"] > 0
    assert choice["given_undersampled_fraction"] > 0.1 and len(choice["marginal_seed_fits"]) == ps.MARGINAL_SEEDS
    from cryopose.metrics.pose_error import align_rotations

    err = align_rotations(out.rotmats.double(), rot, symmetry="C1", seed=0).errors_deg
    assert float(err.median()) < 5.0
    # without the marginal start the same schedule keeps the collapse
    alone = ps.polish_from_subset(images, meta, collapsed, meta.shifts_angstrom, blurred, schedule=schedule,
                                  max_iterations=4, reconstruct=_reconstruct, marginal_start=False)
    assert alone.subset_start is None
    assert float(align_rotations(alone.rotmats.double(), rot, symmetry="C1", seed=0).errors_deg.median()) > 20.0


def test_the_run_says_when_the_marginal_start_replaced_the_encoders_poses():
    from cryopose.pipelines.polish_subset import start_note

    assert start_note(None) is None
    assert start_note({"kept": "given", "fit": {"given": 0.53, "marginal": 0.50}}) is None
    msg = start_note({"kept": "marginal", "fit": {"given": 0.807, "marginal": 0.833}})
    assert "0.807 against 0.833" in msg and "poses_encoder.star" in msg
