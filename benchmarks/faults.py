"""Benchmark: faults through the real command line, each in its own process, on tiny data.

Each case runs ``python -m cryopose.cli.main ...`` in a subprocess (in a fresh work folder with
a 24-particle, 16-px simulated data set, its reconstruction and a one-epoch ``abinitio`` run,
all made by the CLI first) and is judged on:

* exit status: 2 for a fault, with one line ``cryopose CMD: error: ...`` on stderr (the
  outcome "clear one-line error"), or 0 where the fault is handled (a warning, ``--force``);
* no traceback on stderr and no crash (a signal, an exit status other than 0 or 2);
* no temporary file (``.NAME.*.tmp``) left anywhere in the work folder or the tmpfs mounts;
* no stale or half-written output: a failed command leaves each of its outputs absent or as it
  was; a handled one leaves them complete;
* no silent overwrite: an output that existed is unchanged unless ``--force`` was given;
* crafted pickles (``.pt``, ``.pkl``, ``.npy``) never run: their marker file never appears.

Disk-full and read-only cases mount small tmpfs file systems (root only); where that fails they
are reported as skipped with the reason. Prints a markdown table (docs/results/faults.md) and a
summary line; exits 1 if any case fails.

Usage::

    python benchmarks/faults.py [--keep DIR] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CRYOPOSE_SHARED_DATA", REPO.parent / "shared" / "data"))
PDB = DATA / "pdb" / "4ake_mdanalysis.pdb"
MARKER = "PWNED"


@dataclass
class Case:
    """One fault: the command (arguments after ``cryopose``), what must happen, and its outputs."""

    name: str
    args: list[str]
    expect: str = "error"  # "error": exit 2 and one line; "ok": exit 0 (handled)
    outputs: list[str] = field(default_factory=list)
    say: list[str] = field(default_factory=list)  # words the stderr line must hold
    gone: list[str] = field(default_factory=list)  # files that must not exist afterwards
    setup: object = None  # callable(work) run before, e.g. to craft a file
    needs: str | None = None  # "tmpfs" when the case needs a mount


def _cli(work: Path, args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "cryopose.cli.main", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _star_edit(src: Path, dst: Path, *, drop=(), rows=None) -> None:
    """Copy a cryopose-written STAR, dropping particle columns and rewriting rows (``rows(list)``)."""
    lines = src.read_text().splitlines()
    start = lines.index("data_particles")
    head = lines[:start]
    body = lines[start:]
    cols = [ln.split()[0] for ln in body if ln.startswith("_rln")]
    data = [ln.split() for ln in body if ln.strip() and not ln.startswith(("_", "data_", "loop_", "#"))]
    keep = [i for i, c in enumerate(cols) if c.lstrip("_") not in drop]
    data = [[r[i] for i in keep] for r in data]
    if rows is not None:
        data = rows(data, [cols[i] for i in keep])
    out = head + ["data_particles", "", "loop_"] + [cols[i] for i in keep] + [" ".join(r) for r in data]
    dst.write_text("\n".join(out) + "\n")


def _set(col):
    def change(value_fn):
        def rows(data, cols):
            j = cols.index("_" + col)
            for k, r in enumerate(data):
                r[j] = value_fn(k, r[j])
            return data
        return rows
    return change


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _crafted_files(work: Path) -> None:
    import pickle

    import numpy as np
    import torch

    torch.save({"model_state": _Evil()}, work / "evil.pt")
    (work / "evil_run").mkdir(exist_ok=True)
    torch.save({"format": "cryopose-abinitio", "x": _Evil()}, work / "evil_run" / "checkpoint.pt")
    (work / "evil.pkl").write_bytes(pickle.dumps(_Evil()))
    np.save(work / "evil.npy", np.array([_Evil()], dtype=object), allow_pickle=True)
    (work / "garbage.pt").write_bytes(os.urandom(2000))


def _fixtures(work: Path) -> None:
    """The tiny data set, its maps and a one-epoch run, made by the CLI; then the broken copies."""
    import numpy as np

    for args in (["simulate", "-i", str(PDB), "--box-size", "16", "-n", "24", "-o", "s", "--snr", "2", "--seed", "1",
                  "--no-progress", "--threads", "1"],
                 ["reconstruct", "s.star", "-o", "m.mrc", "--threads", "1", "--no-progress"],
                 ["simulate", "-i", str(PDB), "--box-size", "16", "-n", "20", "-o", "o", "--snr", "2", "--seed", "5",
                  "--no-progress", "--threads", "1"],
                 ["abinitio", "s.star", "-o", "run", "--box-size", "16", "--epochs", "2", "--batch-size", "8",
                  "--hypotheses", "1", "--threads", "1", "--no-progress", "--no-report", "--no-reconstruct"]):
        res = _cli(work, args)
        if res.returncode != 0:
            raise SystemExit(f"fixture {' '.join(args)} failed:\n{res.stderr}")
    s = work / "s.star"
    raw = (work / "s.mrcs").read_bytes()
    (work / "t.mrcs").write_bytes(raw[: len(raw) // 2])
    _star_edit(s, work / "trunc.star", rows=_set("rlnImageName")(lambda k, v: v.replace("s.mrcs", "t.mrcs")))
    _star_edit(s, work / "noname.star", drop=("rlnImageName",))
    _star_edit(s, work / "nopsi.star", drop=("rlnAnglePsi",))
    _star_edit(s, work / "nan.star", rows=_set("rlnAngleTilt")(lambda k, v: "abc" if k == 3 else v))
    _star_edit(s, work / "range.star", rows=_set("rlnImageName")(lambda k, v: "99@s.mrcs" if k == 5 else v))
    _star_edit(s, work / "dup.star", rows=_set("rlnImageName")(lambda k, v: "000002@s.mrcs" if k == 7 else v))
    _star_edit(s, work / "negdf.star", rows=_set("rlnDefocusU")(lambda k, v: "-12000" if k == 2 else v))
    _star_edit(s, work / "passwd.star", rows=_set("rlnImageName")(lambda k, v: "1@../../../../etc/passwd"))
    _star_edit(s, work / "noctf.star", drop=("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
                                            "rlnCtfBfactor"))
    group1 = "1 opticsGroup1 300 2.7 0.1 "
    mixed = s.read_text().replace(group1, "2 fine 300 2.7 0.1 1.0 16 2\n" + group1, 1)
    (work / "mixed.star").write_text(mixed)
    _star_edit(work / "mixed.star", work / "mixed.star",
               rows=_set("rlnOpticsGroup")(lambda k, v: "2" if k % 2 else v))
    (work / "notstar.star").write_text("this is not a STAR file\n\x00\x01\x02\n")
    (work / "notmap.mrc").write_text("not an MRC map at all")
    (work / "afile").write_text("a file where a folder is expected")
    (work / "dir.mrc").mkdir()
    hdr = (work / "m.mrc").read_bytes()
    (work / "trunc.mrc").write_bytes(hdr[: len(hdr) - 4000])
    from cryopose.io.mrc import write_map

    write_map(work / "const.mrc", np.ones((16, 16, 16), np.float32), 8.037016269)
    write_map(work / "small.mrc", np.random.default_rng(0).normal(size=(8, 8, 8)), 8.037016269)
    write_map(work / "wrongpx.mrc", np.random.default_rng(0).normal(size=(16, 16, 16)), 1.0)
    shutil.copytree(work / "run", work / "run2")  # resumed (and refused) by the resume cases
    _crafted_files(work)


def _mount(where: Path, size: str, read_only=False, filler=0) -> str | None:
    where.mkdir(exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        return (res.stderr or res.stdout).strip() or f"mount exit status {res.returncode}"
    if filler:
        (where / "filler").write_bytes(b"\0" * filler)
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    return None


def _stale_temps(roots) -> list[str]:
    found = []
    for root in roots:
        for dirpath, _, files in os.walk(root):
            found += [os.path.join(dirpath, f) for f in files if f.startswith(".") and f.endswith(".tmp")]
    return found


def _signature(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def cases() -> list[Case]:
    """The fault cases (files, paths, options, disks, existing outputs, scales, resumes)."""
    sim = ["simulate", "-i", str(PDB), "--box-size", "16", "-n", "8", "--seed", "2", "--no-progress", "--threads", "1"]
    rec = ["reconstruct", "--threads", "1", "--no-progress"]
    rec_out = ["out.mrc", "out_half1.mrc", "out_half2.mrc", "out_fsc.json"]
    abi = ["--box-size", "16", "--epochs", "1", "--batch-size", "8", "--hypotheses", "1", "--threads", "1",
           "--no-progress", "--no-report", "--no-reconstruct"]
    abi2 = [*abi[:2], "--epochs", "2", *abi[4:]]  # the options of the fixture run run2
    srch = ["--step", "30", "--final-step", "15", "--threads", "1"]
    sim_out = lambda p: [f"{p}.star", f"{p}.mrcs", f"{p}_config.yaml"]  # noqa: E731
    return [
        # bad files
        Case("missing structure file", ["simulate", "-i", "nothere.pdb", "-o", "x"], outputs=sim_out("x"),
             say=["nothere.pdb"]),
        Case("structure file that is not a map", ["simulate", "-i", "notmap.mrc", "-o", "x"], outputs=sim_out("x"),
             say=["notmap.mrc"]),
        Case("truncated particle stack", [*rec, "trunc.star", "-o", "out.mrc"], outputs=rec_out, say=["t.mrcs"]),
        Case("STAR file that is not STAR", [*rec, "notstar.star", "-o", "out.mrc"], outputs=rec_out,
             say=["notstar.star"]),
        Case("STAR without rlnImageName", [*rec, "noname.star", "-o", "out.mrc"], outputs=rec_out,
             say=["rlnImageName"]),
        Case("STAR with a partial angle set", [*rec, "nopsi.star", "-o", "out.mrc"], outputs=rec_out,
             say=["rlnAnglePsi"]),
        Case("STAR with a non-numeric angle", [*rec, "nan.star", "-o", "out.mrc"], outputs=rec_out,
             say=["rlnAngleTilt", "row"]),
        Case("image index beyond the stack", [*rec, "range.star", "-o", "out.mrc"], outputs=rec_out, say=["99"]),
        Case("duplicate image names", [*rec, "dup.star", "-o", "out.mrc"], outputs=rec_out,
             say=["name the same image"]),
        Case("negative defocus", [*rec, "negdf.star", "-o", "out.mrc"], outputs=rec_out, say=["rlnDefocusU"]),
        Case("image name ../../etc/passwd", [*rec, "passwd.star", "-o", "out.mrc"], outputs=rec_out,
             say=["outside the folders"]),
        Case("image folder given is a file", [*rec, "s.star", "-o", "out.mrc", "--datadir", "afile"],
             outputs=rec_out, say=["afile"]),
        Case("truncated map", ["fsc", "trunc.mrc", "m_half2.mrc"], say=["trunc.mrc"]),
        Case("maps of different sizes", ["fsc", "m_half1.mrc", "small.mrc"], say=["differ in size"]),
        Case("constant map (FSC undefined)", ["fsc", "const.mrc", "m_half2.mrc"], say=["constant"]),
        Case("crafted pickle in a model .pt", ["predict", "evil.pt", "s.star", "-o", "p.star"], outputs=["p.star"],
             say=["evil.pt"]),
        Case("random bytes as a model .pt", ["predict", "garbage.pt", "s.star", "-o", "p.star"], outputs=["p.star"],
             say=["garbage.pt"]),
        Case("crafted pickle in a resumed checkpoint", ["abinitio", "s.star", "-o", "evil_run", "--resume", *abi],
             say=["checkpoint.pt"]),
        Case("crafted .pkl CTF table", [*sim, "-o", "x", "--ctf-table", "evil.pkl"], outputs=sim_out("x"),
             say=["evil.pkl"]),
        Case("crafted object .npy CTF table", [*sim, "-o", "x", "--ctf-table", "evil.npy"], outputs=sim_out("x"),
             say=["evil.npy"]),
        # bad paths
        Case("output folder does not exist", [*rec, "s.star", "-o", "nodir/out.mrc"], say=["nodir"]),
        Case("output file is an existing folder", [*rec, "s.star", "-o", "dir.mrc"], say=["dir.mrc", "folder"]),
        Case("a file where a folder is expected", [*sim, "-o", "afile/x"], say=["afile"]),
        Case("abinitio -o names a file", ["abinitio", "s.star", "-o", "afile", *abi], say=["afile"]),
        Case("output under /proc", [*rec, "s.star", "-o", "/proc/out.mrc"], say=["/proc/out.mrc"]),
        Case("search -o that is not .star", ["search", "s.star", "--reference", "m.mrc", "-o", "p.txt", *srch],
             outputs=["p.txt"], say=["p.txt"]),
        # bad options
        Case("zero particles", [*sim, "-o", "x", "-n", "0"], outputs=sim_out("x"), say=["--n-particles"]),
        Case("--snr with --snr-db", [*sim, "-o", "x", "--snr", "1", "--snr-db", "0"], outputs=sim_out("x"),
             say=["--snr"]),
        Case("working box larger than the images", ["abinitio", "s.star", "-o", "big", *abi, "--box-size", "64"],
             say=["--box-size 64"]),
        Case("zero threads", [*rec, "s.star", "-o", "out.mrc", "--threads", "0"], outputs=rec_out,
             say=["--threads"]),
        Case("unknown symmetry", [*rec, "s.star", "-o", "out.mrc", "--symmetry", "Q7"], outputs=rec_out,
             say=["Q7"]),
        Case("zero batch size", ["predict", "run/encoder.pt", "s.star", "-o", "p.star", "--batch-size", "0"],
             outputs=["p.star"], say=["--batch-size"]),
        Case("particle pixel size disagrees", [*rec, "s.star", "-o", "out.mrc", "--pixel-size", "3"],
             outputs=rec_out, say=["pixel"]),
        # full disk, read-only file system
        Case("simulate on a full 2 MB tmpfs", [*sim, "-n", "1000", "-o", "full/x"], outputs=sim_out("full/x"),
             say=["full/x.mrcs"], needs="tmpfs"),
        Case("reconstruct on a full disk", [*rec, "s.star", "-o", "tiny/out.mrc"], say=["tiny/out.mrc"],
             needs="tmpfs"),
        Case("fsc --plot on a full disk", ["fsc", "m_half1.mrc", "m_half2.mrc", "--plot", "tiny/fsc.png"],
             outputs=["tiny/fsc.png"], say=["tiny/fsc.png", "no space"], needs="tmpfs"),
        Case("checkpoint on a full disk", ["abinitio", "s.star", "-o", "tiny/run", *abi], say=["tiny/run"],
             needs="tmpfs"),
        Case("simulate on a read-only file system", [*sim, "-o", "ro/x"], outputs=sim_out("ro/x"),
             say=["read-only"], needs="tmpfs"),
        Case("predict on a read-only file system", ["predict", "run/encoder.pt", "s.star", "-o", "ro/p.star"],
             outputs=["ro/p.star"], say=["read-only"], needs="tmpfs"),
        Case("abinitio on a read-only file system", ["abinitio", "s.star", "-o", "ro/run", *abi],
             say=["read-only"], needs="tmpfs"),
        # existing outputs
        Case("simulate over an existing stack", [*sim, "-o", "s"], outputs=sim_out("s"), say=["--force"]),
        Case("reconstruct over an existing map", [*rec, "s.star", "-o", "m.mrc"],
             outputs=["m.mrc", "m_half1.mrc", "m_half2.mrc", "m_fsc.json"], say=["--force"]),
        Case("search over existing poses", ["search", "s.star", "--reference", "m.mrc", "-o", "s.star", *srch],
             outputs=["s.star"], say=["--force"]),
        Case("fsc --plot over an existing file", ["fsc", "m_half1.mrc", "m_half2.mrc", "--plot", "s.star"],
             outputs=["s.star"], say=["--force"]),
        Case("abinitio into a folder holding a run", ["abinitio", "s.star", "-o", "run", *abi],
             outputs=["run/encoder.pt", "run/checkpoint.pt"], say=["--resume"]),
        Case("reconstruct --force replaces and drops stale half maps",
             [*rec, "s.star", "-o", "m2.mrc", "--no-half-maps", "--force"], expect="ok", outputs=["m2.mrc"],
             gone=["m2_half1.mrc"],
             setup=lambda w: [shutil.copy(w / "m_half1.mrc", w / "m2_half1.mrc"),
                              shutil.copy(w / "m.mrc", w / "m2.mrc")]),
        Case("temp file of a killed writer is cleaned", [*sim, "-o", "k"], expect="ok", outputs=sim_out("k"),
             gone=[".k.star.999999.dead0000.tmp"],
             setup=lambda w: (w / ".k.star.999999.dead0000.tmp").write_bytes(b"")),
        # scales and optics groups
        Case("map pixel size disagrees with the particles",
             ["search", "s.star", "--reference", "wrongpx.mrc", "-o", "p.star", *srch], outputs=["p.star"],
             say=["--map-pixel-size", "--force"]),
        Case("optics groups with mixed pixel sizes", [*rec, "mixed.star", "-o", "out.mrc"], outputs=rec_out,
             say=["--optics-group"]),
        Case("--optics-group selects one", [*rec, "mixed.star", "-o", "og.mrc", "--optics-group", "opticsGroup1",
                                            "--no-half-maps"], expect="ok", outputs=["og.mrc"]),
        Case("unknown --optics-group", [*rec, "mixed.star", "-o", "out.mrc", "--optics-group", "7"],
             outputs=rec_out, say=["no optics group '7'"]),
        Case("STAR without CTF (stated on screen)", [*rec, "noctf.star", "-o", "nc.mrc", "--no-half-maps"],
             expect="ok", outputs=["nc.mrc"], say=["no CTF"]),
        Case("bare stack without --ctf (stated on screen)", ["predict", "run/encoder.pt", "s.mrcs", "-o", "b.star"],
             expect="ok", outputs=["b.star"], say=["no CTF"]),
        # resume
        Case("resume on other particles", ["abinitio", "o.star", "-o", "run2", "--resume", *abi2],
             outputs=["run2/checkpoint.pt", "run2/encoder.pt"], say=["not the interrupted run's"]),
        Case("resume with fewer epochs", ["abinitio", "s.star", "-o", "run2", "--resume", *abi],
             outputs=["run2/checkpoint.pt", "run2/encoder.pt"], say=["epochs"]),
        Case("resume with other options", ["abinitio", "s.star", "-o", "run2", "--resume", *abi2[:4],
                                           "--batch-size", "4", *abi2[6:]], outputs=["run2/checkpoint.pt"],
             say=["batch_size: 8 then, 4 now"]),
        Case("resume without a checkpoint", ["abinitio", "s.star", "-o", "norun", "--resume", *abi],
             say=["no checkpoint.pt"]),
    ]


def _judge(case: Case, res, work: Path, before: dict, roots) -> tuple[str, dict]:
    """The outcome text and the four checks (True = passed) of one finished case."""
    err = res.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    checks = {"traceback": "Traceback" not in err and res.returncode in (0, 2),
              "temps": not _stale_temps(roots),
              "stale": True, "overwrite": True}
    force = "--force" in case.args
    for rel, sig in before.items():
        now = _signature(work / rel)
        if case.expect == "error" and now is not None and now != sig:
            checks["stale"] = False
        if case.expect == "ok" and now is None:
            checks["stale"] = False
        if sig is not None and now != sig and not force:
            checks["overwrite"] = False
    if any((work / g).exists() for g in case.gone):
        checks["stale"] = False
    if (work / MARKER).exists():
        return "FAIL: the crafted pickle ran", checks
    if ".tmp" in err:
        return "FAIL: the message names a temporary file", checks
    missing = [w for w in case.say if w not in err]
    if case.expect == "error":
        errors = [ln for ln in lines if ": error: " in ln]
        if res.returncode != 2 or len(lines) != 1 or len(errors) != 1:
            return f"FAIL: exit {res.returncode}, {len(lines)} stderr lines: {(lines or ['-'])[-1][:160]}", checks
        outcome = "clear one-line error"
    else:
        if res.returncode != 0:
            return f"FAIL: exit {res.returncode}: {(lines or ['-'])[-1][:160]}", checks
        outcome = "handled"
    if missing:
        return f"FAIL: message lacks {missing}: {(lines or ['-'])[-1][:160]}", checks
    return outcome, checks


def _said(stderr: str, work: Path, width: int = 150) -> str:
    """The last ``error:``/``warning:`` line of stderr (else its last line; progress bars are
    skipped), work folder as WORK, cut to ``width``, safe in a table cell."""
    lines = [ln.strip() for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    said = [ln for ln in lines if " error: " in ln or " warning: " in ln] or [ln for ln in lines if "%|" not in ln]
    text = (said[-1] if said else "-").replace(str(work), "WORK").replace(str(REPO.parent), "..")
    text = text if len(text) <= width else text[:width - 3] + "..."
    return text.replace("|", "\\|").replace("`", "'")


def _shown(args) -> str:
    text = " ".join(a if " " not in a else repr(a) for a in args).replace(str(PDB), "4ake.pdb")
    return text if len(text) <= 90 else text[:87] + "..."


def run(work: Path, only: str | None) -> int:
    """Make the fixtures, mount the tmpfs folders, run every case; print the table; 0 if all pass."""
    t0 = time.perf_counter()
    _fixtures(work)
    mounts = {"full": ("2m", False, 0), "tiny": ("64k", False, 60 << 10), "ro": ("2m", True, 0)}
    why_not = {}
    for name, (size, ro, filler) in mounts.items():
        why_not[name] = _mount(work / name, size, ro, filler)
    reason = next((w for w in why_not.values() if w), None)
    roots = [work]
    rows, failed, skipped = [], 0, 0
    print("| # | case | command (`cryopose ...`) | exit | outcome | what it said (stderr) | no traceback | "
          "no temp file | "
          "no stale or half output | no silent overwrite | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, case in enumerate(c for c in cases() if not only or only in c.name):
        if case.needs == "tmpfs" and reason:
            skipped += 1
            print(f"| {i + 1} | {case.name} | `{_shown(case.args)}` | - | skipped: cannot mount tmpfs ({reason}) "
                  "| | | | | | |")
            continue
        if case.setup:
            case.setup(work)
        before = {rel: _signature(work / rel) for rel in case.outputs}
        t1 = time.perf_counter()
        res = _cli(work, case.args)
        seconds = time.perf_counter() - t1
        outcome, checks = _judge(case, res, work, before, roots)
        for rel, sig in before.items():  # the next cases start from the fixtures again
            if sig is None and (work / rel).is_file():
                (work / rel).unlink()
        ok = not outcome.startswith("FAIL") and all(checks.values())
        failed += not ok
        marks = " | ".join("✓" if checks[k] else "✗" for k in ("traceback", "temps", "stale", "overwrite"))
        said = _said(res.stderr, work)
        print(f"| {i + 1} | {case.name} | `{_shown(case.args)}` | {res.returncode} | {outcome.replace('|', '/')} | "
              f"{said} | {marks} | {seconds:.1f} |", flush=True)
        rows.append(ok)
    for name in mounts:
        subprocess.run(["umount", "-l", str(work / name)], capture_output=True)
    print(f"\n{len(rows)} cases run, {len(rows) - failed} passed every check, {failed} failed, {skipped} skipped; "
          f"{time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


def main(argv=None) -> int:
    """Parse the options and run the cases in a temporary work folder (kept with ``--keep``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (created, kept) instead of a temporary folder")
    parser.add_argument("--only", metavar="TEXT", help="run only the cases whose name contains TEXT")
    args = parser.parse_args(argv)
    if args.keep:
        work = Path(args.keep).absolute()
        work.mkdir(parents=True, exist_ok=False)
        return run(work, args.only)
    with tempfile.TemporaryDirectory(prefix="cryopose-faults-") as tmp:
        return run(Path(tmp), args.only)


if __name__ == "__main__":
    sys.exit(main())
