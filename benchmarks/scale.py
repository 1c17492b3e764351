"""Scale: memory flat in the number of particles, streaming vs in-memory, and the GPU numbers.

Sections (``--sections``, default all three):

* ``memory`` — peak resident memory (RSS) of ``cryopose predict`` and of one ``cryopose
  abinitio`` epoch at each ``--sizes`` (10,000 and 50,000 by default; ``--full``: 10,000,
  100,000 and 500,000), both streaming (``--stream``), each run in its own process: a small
  Python parent starts the command and reads ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``
  after it ends (the largest RSS of the command and its DataLoader workers), and the ratio of
  the largest to the smallest.
* ``throughput`` — images/s of ``cryopose predict`` on the same particles (the first size),
  ``--in-memory`` against ``--stream`` with 0 and 1 DataLoader workers; wall time of the whole
  command (reading the STAR file, building the cache or streaming, encoding, scoring, writing).
* ``distributed`` (not in the default set) — wall time of ``predict`` and of one ``abinitio`` epoch
  in one process and in two Gloo processes under ``torchrun`` on the first size.
* ``gpu`` — only when PyTorch sees a CUDA GPU (else it prints that none was available): the
  encoder + candidate scoring of ``predict`` in images/s at 64, 128 and 256 px in fp32 and bf16,
  ``abinitio`` training steps/s at working boxes 64 and 128, and the reconstruction time of
  100,000 particles at 128 px (``--gpu-on-cpu`` runs the same code on the CPU at tiny sizes,
  to check the script without a GPU; its numbers mean nothing).

The particles are made fast, not with ``cryopose simulate``: 256 Fourier-slice projections of
the bundled β-gal map (64 px, random poses, CTF with defoci 1–2.5 µm) are computed once, and
every particle is one of them plus white Gaussian noise (SNR 0.1), written straight into
``.mrcs`` files of 1,000 images (so 100,000 particles are 100 files) with a RELION 3.1 STAR
file. ``predict`` uses an untrained CryoPoseNet encoder of the default architecture at 64 px
(its weights do not change the cost); ``abinitio`` runs one epoch at working box 32 without the
search warm-up (``--search-fraction 0``: the warm-up's grid search multiplies the time per step,
not the memory), without reconstruction, polishing or report.

Usage::

    python benchmarks/scale.py --workdir /tmp/scale                 # 10k and 50k, a few minutes
    python benchmarks/scale.py --workdir /tmp/scale --full          # 10k, 100k, 500k
    python benchmarks/scale.py --workdir /tmp/scale --sections gpu  # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BANK = 256
PER_FILE = 1000
BOX = 64


def _bank(seed: int = 0):
    """``BANK`` clean CTF-modulated projections of β-gal at 64 px, their poses and defoci."""
    from cryopose.ctf import CTFParams, compute_ctf
    from cryopose.io.mrc import read_map
    from cryopose.pipelines.demo import BETAGAL_MAP, BETAGAL_PIXEL_SIZE, bundled_path
    from cryopose.projection import project
    from cryopose.rotations import random_rotations

    g = torch.Generator().manual_seed(seed)
    vol = torch.from_numpy(read_map(bundled_path(BETAGAL_MAP), pixel_size_angstrom=BETAGAL_PIXEL_SIZE).volume.copy())
    rot = random_rotations(BANK, generator=g, dtype=torch.float64)
    du = 10000.0 + 15000.0 * torch.rand(BANK, generator=g, dtype=torch.float64)
    ctf = CTFParams.create(defocus_u_angstrom=du.float(), defocus_v_angstrom=(du - 200).float(), defocus_angle_deg=20.0)
    clean = project(vol.double(), rot, ctf=compute_ctf(ctf, BOX, BETAGAL_PIXEL_SIZE).double()).float()
    return clean.numpy(), rot, du.numpy(), BETAGAL_PIXEL_SIZE


def generate(folder: Path, n: int, *, snr: float = 0.1, seed: int = 0) -> Path:
    """Write ``n`` particles (``folder/stacks/*.mrcs`` + ``folder/particles.star``); returns the STAR path."""
    import mrcfile

    from cryopose.rotations import rotmat_to_relion_euler

    star = folder / "particles.star"
    if star.exists():
        return star
    (folder / "stacks").mkdir(parents=True, exist_ok=True)
    clean, rot, du, apix = _bank(seed)
    sigma = float(clean.std()) / np.sqrt(snr)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, BANK, size=n)
    angles = rotmat_to_relion_euler(rot).numpy()
    rows = []
    for f, start in enumerate(range(0, n, PER_FILE)):
        k = pick[start:start + PER_FILE]
        data = clean[k] + rng.standard_normal((k.size, BOX, BOX), dtype=np.float32) * sigma
        name = f"stacks/s{f:05d}.mrcs"
        with mrcfile.new(folder / name, overwrite=True) as m:
            m.set_data(data.astype(np.float32))
            m.voxel_size = apix
        for j, b in enumerate(k):
            a = angles[b]
            rows.append(f"{j + 1:06d}@{name} 1 {a[0]:.4f} {a[1]:.4f} {a[2]:.4f} 0 0 {du[b]:.1f} {du[b] - 200:.1f} 20")
    head = ("\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n_rlnImagePixelSize #3\n"
            "_rlnImageSize #4\n_rlnImageDimensionality #5\n_rlnVoltage #6\n_rlnSphericalAberration #7\n"
            f"_rlnAmplitudeContrast #8\n1 opticsGroup1 {apix:.6f} {BOX} 2 300 2.7 0.1\n\n\ndata_particles\n\nloop_\n")
    cols = ["rlnImageName", "rlnOpticsGroup", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
            "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
    tmp = star.with_suffix(".tmp")
    tmp.write_text(head + "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(cols)) + "\n".join(rows) + "\n")
    tmp.replace(star)
    return star


def untrained_encoder(path: Path, *, box: int = BOX, apix: float | None = None) -> Path:
    """An untrained default CryoPoseNet ``encoder.pt`` at ``box`` px (the cost of predict, not its poses)."""
    import dataclasses

    from cryopose.data.transforms import Normalization
    from cryopose.pipelines.abinitio import build_model
    from cryopose.pipelines.demo import BETAGAL_PIXEL_SIZE
    from cryopose.training.checkpoint import save_checkpoint
    from cryopose.training.config import AbinitioConfig

    apix = BETAGAL_PIXEL_SIZE * BOX / box if apix is None else apix
    cfg = AbinitioConfig(box_size=box, invert_contrast=False, estimate_shifts=False)
    model = build_model(cfg, box_size=box, pixel_size_angstrom=apix)
    save_checkpoint(path, {"config": dataclasses.asdict(cfg), "model": model.state_dict(), "working_box_size": box,
                           "working_pixel_size_angstrom": apix,
                           "normalization": dataclasses.asdict(Normalization(std=3.0))})
    return path


def measure(cmd: list[str], threads: int) -> tuple[float, float]:
    """``(peak RSS in MiB, wall seconds)`` of a command run in a fresh parent process."""
    probe = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
             "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
             "print(json.dumps([rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t]))")
    env = {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=env, check=True)
    rc, kib, wall = json.loads(out.stdout.strip().splitlines()[-1])
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {rc}: {out.stderr[-2000:]}")
    return kib / 1024.0, wall


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "cryopose.cli.main", *map(str, args)]


def memory_section(work: Path, sizes: list[int], threads: int, box: int) -> list[dict]:
    enc = untrained_encoder(work / f"encoder{box}.pt", box=box)
    rows = []
    for n in sizes:
        star = generate(work / f"n{n}", n)
        pred = work / f"n{n}" / "pred.star"
        pred.unlink(missing_ok=True)
        rss_p, t_p = measure(_cli("predict", enc, star, "-o", pred, "--stream", "--device", "cpu", "--threads",
                                  threads, "--no-progress", "--force"), threads)
        run = work / f"n{n}" / "abinitio"
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        rss_a, t_a = measure(_cli("abinitio", star, "-o", run, "--epochs", "1", "--box-size", box,
                                  "--search-fraction", "0", "--polish-rounds", "0", "--no-reconstruct", "--no-report",
                                  "--no-invert-contrast", "--no-estimate-shifts", "--stream", "--device", "cpu",
                                  "--threads", threads, "--no-progress"), threads)
        rows.append({"n": n, "predict_rss_mib": rss_p, "predict_s": t_p, "abinitio_rss_mib": rss_a, "abinitio_s": t_a})
        print(f"  N = {n:>7,}: predict {rss_p:7.0f} MiB ({t_p:6.1f} s), abinitio epoch {rss_a:7.0f} MiB "
              f"({t_a:6.1f} s)", flush=True)
    for key in ("predict_rss_mib", "abinitio_rss_mib"):
        vals = [r[key] for r in rows]
        print(f"  {key.split('_')[0]}: largest/smallest peak RSS = {max(vals) / min(vals):.2f}")
    return rows


def throughput_section(work: Path, n: int, threads: int, box: int) -> list[dict]:
    enc = untrained_encoder(work / f"encoder{box}.pt", box=box)
    star = generate(work / f"n{n}", n)
    rows = []
    for label, extra in (("in-memory", ["--in-memory"]), ("stream, 0 workers", ["--stream"]),
                         ("stream, 1 worker", ["--stream", "--workers", "1"])):
        pred = work / f"n{n}" / "tp.star"
        rss, wall = measure(_cli("predict", enc, star, "-o", pred, "--device", "cpu", "--threads", threads,
                                 "--no-progress", "--force", *extra), threads)
        rows.append({"mode": label, "n": n, "images_per_s": n / wall, "wall_s": wall, "rss_mib": rss})
    base = rows[0]["images_per_s"]
    for r in rows:
        print(f"  {r['mode']:<18} {r['images_per_s']:8.0f} img/s ({r['wall_s']:.1f} s, {r['rss_mib']:.0f} MiB), "
              f"{r['images_per_s'] / base:.2f}× in-memory", flush=True)
    return rows


def distributed_section(work: Path, n: int, threads: int, box: int) -> list[dict]:
    """Wall time of predict and of one abinitio epoch in 1 process and in 2 Gloo processes (torchrun)."""
    import shutil

    enc = untrained_encoder(work / f"encoder{box}.pt", box=box)
    star = generate(work / f"n{n}", n)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    rows = []
    for procs in (1, 2):
        pred = work / f"n{n}" / f"dist{procs}.star"
        pred.unlink(missing_ok=True)
        cmd = [*run, str(procs), "-m", "cryopose.cli.main", "predict", str(enc), str(star), "-o", str(pred),
               "--device", "cpu", "--threads", str(threads), "--no-progress", "--stream"]
        rss_p, t_p = measure(cmd, threads)
        out = work / f"n{n}" / f"dist{procs}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [*run, str(procs), "-m", "cryopose.cli.main", "abinitio", str(star), "-o", str(out), "--epochs", "1",
               "--box-size", str(box), "--search-fraction", "0", "--polish-rounds", "0", "--no-reconstruct",
               "--no-report", "--no-invert-contrast", "--no-estimate-shifts", "--stream", "--device", "cpu",
               "--threads", str(threads), "--no-progress"]
        rss_a, t_a = measure(cmd, threads)
        rows.append({"processes": procs, "n": n, "predict_s": t_p, "abinitio_s": t_a})
        print(f"  {procs} process(es): predict {t_p:6.1f} s ({n / t_p:5.0f} img/s), abinitio epoch {t_a:6.1f} s",
              flush=True)
    print(f"  2 processes ÷ 1: predict {rows[0]['predict_s'] / rows[1]['predict_s']:.2f}× the throughput, abinitio "
          f"{rows[0]['abinitio_s'] / rows[1]['abinitio_s']:.2f}×", flush=True)
    return rows


def gpu_section(on_cpu: bool = False) -> dict:
    """Predict img/s (64/128/256 px, fp32/bf16), abinitio steps/s (64/128), reconstruction of 100k at 128 px."""
    from cryopose.ctf import CTFParams
    from cryopose.data.dataset import ParticleDataset, TensorStack
    from cryopose.io.metadata import ParticleMetadata
    from cryopose.pipelines.abinitio import build_model
    from cryopose.reconstruction import reconstruct
    from cryopose.runtime import Runtime
    from cryopose.search.band import make_band
    from cryopose.training.config import AbinitioConfig, TrainingConfig
    from cryopose.training.trainer import Trainer, band_residuals, candidate_poses

    dev = torch.device("cpu" if on_cpu else "cuda")
    sync = (lambda: None) if on_cpu else torch.cuda.synchronize
    small = on_cpu
    out: dict = {"device": str(dev) if on_cpu else torch.cuda.get_device_name(0)}

    def particles(n, box):
        ctf = CTFParams.create(defocus_u_angstrom=torch.full((n,), 15000.0))
        meta = ParticleMetadata(pixel_size_angstrom=2.0, box_size=box, ctf=ctf, shifts_angstrom=torch.zeros(n, 2))
        return ParticleDataset(TensorStack(torch.randn(n, box, box)), meta, cache_limit_mb=float("inf"))

    batch = 8 if small else 256
    for box in ((16, 32) if small else (64, 128, 256)):
        cfg = AbinitioConfig(box_size=box)
        model = build_model(cfg, box_size=box, pixel_size_angstrom=2.0).to(dev).eval()
        ds = particles(batch, box)
        b = ds.batch(np.arange(batch)).to(dev)
        band = make_band(box, device=dev)
        for prec in ("32", "bf16"):
            with torch.no_grad():
                vft = model.volume.prepare()
                reps = 2 if small else 10
                for i in range(reps + 1):
                    if i == 1:
                        sync()
                        t0 = time.perf_counter()
                    rot, sh = candidate_poses(model, b.images, symmetric=True, precision=prec)
                    band_residuals(vft, b, rot, sh, band).argmin(dim=1)
                sync()
            rate = batch * reps / (time.perf_counter() - t0)
            out[f"predict_{box}px_{prec}_img_per_s"] = rate
            print(f"  predict {box:>3} px {prec:>4}: {rate:9.0f} img/s", flush=True)
    for box in ((16,) if small else (64, 128)):
        cfg = AbinitioConfig(box_size=box, training=TrainingConfig(epochs=1, batch_size=8 if small else 64))
        ds = particles(64 if small else 2048, box)
        model = build_model(cfg, box_size=box, pixel_size_angstrom=2.0)
        tr = Trainer(model, ds, cfg.training, progress=False, runtime=Runtime(device=dev))
        steps = 3 if small else 20
        tr.train_step(np.arange(cfg.training.batch_size))
        sync()
        t0 = time.perf_counter()
        for s in range(steps):
            tr.train_step(np.arange(cfg.training.batch_size) + s)
        sync()
        rate = steps / (time.perf_counter() - t0)
        out[f"abinitio_{box}px_steps_per_s"] = rate
        print(f"  abinitio {box:>3} px (batch {cfg.training.batch_size}, search warm-up on): {rate:.2f} steps/s",
              flush=True)
    n, box = (200, 16) if small else (100_000, 128)
    from cryopose.rotations import random_rotations

    images = torch.randn(n, box, box)
    meta = ParticleMetadata(pixel_size_angstrom=2.0, box_size=box, rotmats=random_rotations(n, dtype=torch.float32),
                            shifts_angstrom=torch.zeros(n, 2),
                            ctf=CTFParams.create(defocus_u_angstrom=torch.full((n,), 15000.0)))
    sync()
    t0 = time.perf_counter()
    reconstruct(TensorStack(images), meta, device=dev, progress=False)
    sync()
    out["reconstruct_s"] = time.perf_counter() - t0
    print(f"  reconstruct {n:,} particles at {box} px (half maps, CTF): {out['reconstruct_s']:.1f} s", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="folder for the generated particles and outputs")
    p.add_argument("--sizes", default="10000,50000", help="particle counts of the memory table (default 10000,50000)")
    p.add_argument("--full", action="store_true", help="sizes 10000,100000,500000")
    p.add_argument("--sections", default="memory,throughput,gpu",
                   help="comma-separated: memory, throughput, gpu, distributed (default: the first three)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each command (default 1)")
    p.add_argument("--working-box", type=int, default=32,
                   help="working box of predict's encoder and of the abinitio epoch, px (default 32; the 64 px "
                        "particles are read whole and Fourier-cropped to it)")
    p.add_argument("--gpu-on-cpu", action="store_true", help="run the gpu section on the CPU at tiny sizes (a check)")
    p.add_argument("--out", type=Path, help="JSON results (default WORKDIR/scale.json)")
    a = p.parse_args(argv)
    sizes = [10_000, 100_000, 500_000] if a.full else [int(s) for s in a.sizes.split(",")]
    sections = set(a.sections.split(","))
    a.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    res: dict = {"command": " ".join(sys.argv), "sizes": sizes, "threads": a.threads, "working_box": a.working_box}
    print(f"cryopose scale benchmark: {BOX} px particles in {a.workdir}; torch {torch.__version__}", flush=True)
    if "memory" in sections:
        print("(a) peak RSS, streaming (--stream), one process per run", flush=True)
        res["memory"] = memory_section(a.workdir, sizes, a.threads, a.working_box)
    if "throughput" in sections:
        print(f"(b) predict throughput on {sizes[0]:,} particles", flush=True)
        res["throughput"] = throughput_section(a.workdir, sizes[0], a.threads, a.working_box)
    if "distributed" in sections:
        print(f"(d) 1 against 2 Gloo processes (torchrun) on {sizes[0]:,} particles", flush=True)
        res["distributed"] = distributed_section(a.workdir, sizes[0], a.threads, a.working_box)
    if "gpu" in sections:
        print("(c) GPU", flush=True)
        if torch.cuda.is_available() or a.gpu_on_cpu:
            res["gpu"] = gpu_section(on_cpu=not torch.cuda.is_available())
        else:
            print(f"  no GPU available (torch {torch.__version__}, torch.cuda.is_available() is False): "
                  "section skipped", flush=True)
            res["gpu"] = None
    out = a.out or a.workdir / "scale.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
