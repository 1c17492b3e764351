"""``cryopose predict --int8`` vs the float encoder: CryoPoseNet amortized inference on a CPU.

Takes a finished ``cryopose demo -o DIR`` run (its ``DIR/abinitio/encoder.pt`` and the simulated
``DIR/particles.star``, whose angles are the truth; β-gal, D2), or any encoder and particles with
true poses (``--encoder``, ``--particles``, ``--symmetry``), and measures in one process,
alternating float and int8 runs ``--repeats`` times (the minimum of each is kept):

* the wall time of the whole ``predict`` pipeline (:func:`cryopose.pipelines.predict.predict_poses`:
  reading the particles, encoding, scoring the candidates against the map, writing the STAR),
  float vs ``int8=True``, and their ratio;
* the wall time of the encoder alone on every particle (batches of ``--batch-size``), float
  (batch norms folded, as ``predict`` runs it) vs the int8 copy
  (:func:`cryopose.pipelines.predict.inference_encoder`, as ``predict`` builds them), and
  their ratio;
* the median / mean pose error of each against the truth after global alignment (both hands,
  modulo ``--symmetry``; :func:`cryopose.metrics.pose_error.evaluate_poses`), and the angle
  between the float and the int8 pose of each particle (median, mean, fraction above 10°).

Usage::

    cryopose demo -o demo_out      # once (about 10 minutes on 2 cores)
    python benchmarks/predict_int8.py --run demo_out [--threads 1] [--repeats 3]

Results are printed and written to ``--out`` (default ``DIR/predict_int8.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _encode_all(encoder, dataset, batch_size: int) -> float:
    """Seconds to encode every particle of ``dataset`` (no gradients)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(dataset), batch_size):
            encoder(dataset.batch(np.arange(s, min(s + batch_size, len(dataset)))).images)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    """Run the benchmark; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="output folder of `cryopose demo` (encoder, particles, D2)")
    p.add_argument("--encoder", type=Path, help="encoder.pt (default RUN/abinitio/encoder.pt)")
    p.add_argument("--particles", type=Path, help="particles with true poses (default RUN/particles.star)")
    p.add_argument("--symmetry", default=None, help="point group of the map (default D2 with --run, else C1)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="JSON results (default RUN/predict_int8.json or ./predict_int8.json)")
    args = p.parse_args(argv)
    if args.run is None and (args.encoder is None or args.particles is None):
        p.error("give --run DIR (a `cryopose demo` output) or both --encoder and --particles")
    encoder = args.encoder or args.run / "abinitio" / "encoder.pt"
    particles = args.particles or args.run / "particles.star"
    symmetry = args.symmetry or ("D2" if args.run is not None else "C1")
    out_json = args.out or (args.run / "predict_int8.json" if args.run is not None else Path("predict_int8.json"))
    for f in (encoder, particles):
        if not Path(f).is_file():
            p.error(f"{f}: no such file")
    torch.set_num_threads(args.threads)

    from cryopose.data.dataset import ParticleDataset
    from cryopose.io.particles import load_particles
    from cryopose.metrics.pose_error import evaluate_poses, symmetry_aware_errors
    from cryopose.pipelines.abinitio import load_encoder
    from cryopose.pipelines.predict import inference_encoder, predict_poses

    # the encoder alone, on the images predict feeds it
    config, model, info = load_encoder(encoder)
    stack, truth = load_particles(particles)
    dataset = ParticleDataset(stack, truth, box_size=info["working_box_size"], invert=config.invert_contrast,
                              normalization=info["normalization"])
    enc_f, enc_q = (inference_encoder(model.encoder, dataset, int8=q) for q in (False, True))
    enc_times = {"float": [], "int8": []}
    pipe_times = {"float": [], "int8": []}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {k: Path(tmp) / f"{k}.star" for k in ("float", "int8")}
        for r in range(args.repeats):
            for kind, enc in (("float", enc_f), ("int8", enc_q)):
                enc_times[kind].append(_encode_all(enc, dataset, args.batch_size))
            for kind in ("float", "int8"):
                t0 = time.perf_counter()
                predict_poses(encoder, particles, outs[kind], batch_size=args.batch_size, int8=kind == "int8",
                              progress=False)
                pipe_times[kind].append(time.perf_counter() - t0)
            print(f"repeat {r + 1}/{args.repeats}: encoder {enc_times['float'][-1]:.2f} s float, "
                  f"{enc_times['int8'][-1]:.2f} s int8; predict {pipe_times['float'][-1]:.2f} s float, "
                  f"{pipe_times['int8'][-1]:.2f} s int8", flush=True)
        est = {k: load_particles(outs[k], datadir=Path(particles).parent)[1] for k in outs}  # stacks beside PARTICLES
    errors = {k: evaluate_poses(est[k], truth, symmetry=symmetry) for k in est}
    diff = symmetry_aware_errors(est["int8"].rotmats.double(), est["float"].rotmats.double(), symmetry=symmetry)
    res = {
        "encoder": str(encoder), "particles": str(particles), "n_particles": len(dataset),
        "working_box_size": int(info["working_box_size"]), "symmetry": symmetry, "threads": args.threads,
        "batch_size": args.batch_size, "repeats": args.repeats, "torch": torch.__version__,
        "encoder_seconds": {k: min(v) for k, v in enc_times.items()},
        "predict_seconds": {k: min(v) for k, v in pipe_times.items()},
        "encoder_speedup": min(enc_times["float"]) / min(enc_times["int8"]),
        "predict_speedup": min(pipe_times["float"]) / min(pipe_times["int8"]),
        "median_error_deg": {k: errors[k]["median_error_deg"] for k in errors},
        "mean_error_deg": {k: errors[k]["mean_error_deg"] for k in errors},
        "int8_vs_float_median_deg": float(diff.median()), "int8_vs_float_mean_deg": float(diff.mean()),
        "int8_vs_float_fraction_above_10deg": float((diff > 10).double().mean()),
    }
    print(f"\n{res['n_particles']} particles, {res['working_box_size']} px, {args.threads} thread(s), "
          f"minimum of {args.repeats}\n")
    print("| encoder | encoder alone (s) | whole predict (s) | median / mean error vs truth (°) |")
    print("|---|---|---|---|")
    for k in ("float", "int8"):
        print(f"| {k} | {res['encoder_seconds'][k]:.2f} | {res['predict_seconds'][k]:.2f} | "
              f"{res['median_error_deg'][k]:.2f} / {res['mean_error_deg'][k]:.2f} |")
    print(f"\nint8 is {res['encoder_speedup']:.2f}× faster (encoder alone), {res['predict_speedup']:.2f}× "
          f"(whole predict); int8 vs float poses: median {res['int8_vs_float_median_deg']:.2f}°, mean "
          f"{res['int8_vs_float_mean_deg']:.2f}°, {100 * res['int8_vs_float_fraction_above_10deg']:.1f}% above 10°")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = out_json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(res, indent=2))
    tmp_json.replace(out_json)
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
