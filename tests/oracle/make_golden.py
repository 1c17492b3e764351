"""Regenerate the golden files in ``tests/oracle/golden`` with RELION 3.1's ``relion_project``.

Usage (from the repository root, RELION 3.1 installed, ../shared/data present)::

    python tests/oracle/make_golden.py

See ``tests/oracle/golden/README.md`` for what the files are.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import oracle_cases as oc  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
SEEDS = {64: 64, 65: 65}


def main() -> None:
    GOLDEN.mkdir(exist_ok=True)
    version = subprocess.run(["relion_project", "--version"], capture_output=True, text=True).stdout.strip()
    for n, seed in SEEDS.items():
        oc.make_map(n, GOLDEN / f"betagal_{n}.mrc")
        oc.make_star(n, GOLDEN / f"particles_{n}.star", seed)
        for ctf in (False, True):
            tag = "ctf" if ctf else "noctf"
            out = oc.run_relion_project(GOLDEN / f"betagal_{n}.mrc", GOLDEN / f"particles_{n}.star",
                                        GOLDEN / f"relion_{tag}_{n}", ctf=ctf)
            Path(str(out)[:-5] + ".star").unlink()  # keep only the images
    print("golden files written with", version or "relion_project")


if __name__ == "__main__":
    main()
