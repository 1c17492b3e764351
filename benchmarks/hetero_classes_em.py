"""Exploration: refine a heterogeneity run's classes by 3D classification with the poses fixed.

Issue 19's pose-aware embedding (``cryopose heterogeneity train``) misses a weak state on the
64-px EMPIAR-10076 mixture (``docs/results/heterogeneity.md``). This script asks whether a
discrete refinement started from the embedding fixes it: K classes from k-means on the run's
latents (K given), then hard-assignment iterations — a map per class reconstructed from its
particles with their poses (half maps, FSC-weighted, :func:`cryopose.reconstruction.reconstruct`),
each particle given to the class whose projection (its CTF and origin) is nearest in squared
error over the whole image. Prints the NMI against the true classes (``rlnCryoposeTrueClass``)
after each iteration. Not part of any command: a measurement for the next step of the issue.

Usage::

    python benchmarks/hetero_classes_em.py --run RUN --particles STAR --k 3 --iterations 5 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a `heterogeneity train` output folder (latents.npy)")
    p.add_argument("--particles", required=True, help="its particles (STAR with poses and true classes)")
    p.add_argument("--k", type=int, default=3, help="classes (k-means on the latents)")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from cryopose.data.dataset import TensorStack
    from cryopose.io.particles import load_particles
    from cryopose.projection import prepare_volume_ft
    from cryopose.reconstruction import reconstruct
    from heterogeneity import nearest_map_labels  # benchmarks/heterogeneity.py, beside this script

    torch.set_num_threads(args.threads)
    stack, meta = load_particles(args.particles)
    truth = meta.table["rlnCryoposeTrueClass"].to_numpy()
    images = torch.cat([im for _, im in stack.iter_chunks(1000)])  # read once
    in_memory = TensorStack(images)
    labels = KMeans(args.k, n_init=10, random_state=0).fit_predict(np.load(f"{args.run}/latents.npy"))
    print(f"k-means K={args.k} on the latents: NMI {nmi(truth, labels):.3f}")
    for it in range(1, args.iterations + 1):
        t0 = time.perf_counter()
        maps = []
        for c in range(args.k):
            idx = np.flatnonzero(labels == c)
            rec = reconstruct(TensorStack(images[idx]), meta.subset(idx), threads=args.threads, progress=False)
            maps.append(prepare_volume_ft(rec.volume))
        new = nearest_map_labels(in_memory, meta, maps)
        changed = float((new != labels).mean())
        labels = new
        sizes = np.bincount(labels, minlength=args.k).tolist()
        print(f"iteration {it}: NMI {nmi(truth, labels):.3f}, sizes {sizes}, {100 * changed:.1f} % changed, "
              f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
