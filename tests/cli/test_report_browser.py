"""The HTML reports of ``cryopose demo`` (64 particles, 1 epoch, 16-px working box) rendered in
headless Chromium: every image loads, every file a page names exists, and the viewing-direction
plots show the asymmetric unit of the symmetry the poses are scored in (D2 for the demo).

Each page is rendered from a copy beside it (so relative paths resolve as in the original)
with a small script that, on the ``load`` event, writes each ``<img>``'s ``src``,
``naturalWidth`` (0 for an image that failed to load or decode) and ``alt`` into the DOM as
JSON; ``chromium --headless --dump-dom`` prints that DOM. Fails, never skips, without Chromium
(the ``chromium`` fixture).
"""

from __future__ import annotations

import html.parser
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.cli.main import main

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]

PROBE = ("<script>window.addEventListener('load', () => {"
         "const out = []; for (const i of document.images) {"
         "out.push({src: i.getAttribute('src'), width: i.complete ? i.naturalWidth : 0, alt: i.alt}); }"
         "const p = document.createElement('pre'); p.id = 'cryopose-probe'; p.textContent = JSON.stringify(out);"
         "document.body.appendChild(p); });</script>")

#: The figures each page must show (relative paths).
EXPECTED = {
    "report.html": {"fsc_vs_truth.png", "angles_estimated.png", "angles_truth.png"},
    "abinitio/report.html": {"loss.png", "fsc.png", "angles.png", "noise.png", "slices.png", "projections.png"},
}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report_browser") / "demo"
    rc = main(["demo", "-o", str(out), "--n-particles", "64", "--epochs", "1", "--box-size", "16",
               "--threads", "1", "--no-progress"])
    assert rc == 0
    return out


class _References(html.parser.HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("src", "href") and value:
                self.refs.append((tag, value))


def _references(page: Path) -> list[tuple[str, str]]:
    parser = _References()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.refs


def _render(chromium: str, page: Path, profile: Path) -> list[dict]:
    """The images of ``page`` as headless Chromium loaded them: ``[{src, width, alt}]``."""
    text = page.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    probe = page.with_name("_probe_" + page.name)
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        res = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    assert res.returncode == 0, res.stderr[-2000:]
    found = re.search(r'<pre id="cryopose-probe">(.*?)</pre>', res.stdout, re.S)
    assert found is not None, f"the page did not finish loading in Chromium:\n{res.stdout[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.parametrize("page", list(EXPECTED))
def test_report_renders_every_image_and_names_no_missing_file(demo_dir, chromium, tmp_path, page):
    path = demo_dir / page
    refs = _references(path)
    missing = [v for _, v in refs if not (path.parent / v).is_file()]
    assert not missing, f"{page} names files that do not exist: {missing}"
    assert all(not re.match(r"[a-z]+:", v) and not v.startswith("/") for _, v in refs), refs  # all relative
    images = _render(chromium, path, tmp_path / "profile")
    assert {im["src"] for im in images} == EXPECTED[page] == {v for tag, v in refs if tag == "img"}
    broken = [im["src"] for im in images if im["width"] <= 0]
    assert not broken, f"images that did not load in Chromium: {broken}"
    assert all(im["alt"] for im in images)


def test_a_missing_image_is_caught(demo_dir, chromium, tmp_path):
    """The probe can fail: a page naming an absent PNG gives width 0 for it."""
    page = tmp_path / "report.html"
    page.write_text((demo_dir / "report.html").read_text(encoding="utf-8").replace("angles_truth.png", "nothing.png"))
    for name in ("fsc_vs_truth.png", "angles_estimated.png"):
        (tmp_path / name).write_bytes((demo_dir / name).read_bytes())
    widths = {im["src"]: im["width"] for im in _render(chromium, page, tmp_path / "profile")}
    assert widths["nothing.png"] == 0 and widths["fsc_vs_truth.png"] > 0 and widths["angles_estimated.png"] > 0


def test_demo_report_shows_viewing_directions_in_the_scoring_symmetrys_unit(demo_dir, chromium, tmp_path):
    from cryopose.io.particles import load_particles
    from cryopose.pipelines.demo import SCORING_SYMMETRY
    from cryopose.report.figures import asymmetric_unit_map
    from cryopose.symmetry import asymmetric_unit_mates

    assert SCORING_SYMMETRY == "D2"
    images = _render(chromium, demo_dir / "report.html", tmp_path / "profile")
    alts = {im["src"]: im["alt"] for im in images}
    for name in ("angles_estimated.png", "angles_truth.png"):
        assert "asymmetric unit of D2" in alts[name], alts[name]
    summary = json.loads((demo_dir / "demo_summary.json").read_text())
    assert "median_pose_error_deg" in summary and "known_pose_fsc0p143_angstrom" in summary
    # the true poses, mapped into the unit as the plot maps them, fall inside the region outlined
    _, meta = load_particles(demo_dir / "particles.star")
    d = asymmetric_unit_mates(meta.rotmats.double(), "D2")[:, 2, :]
    rot = torch.rad2deg(torch.atan2(d[:, 1], d[:, 0])).numpy()
    tilt = torch.rad2deg(torch.arccos(d[:, 2].clamp(-1, 1))).numpy()
    inside = np.array([asymmetric_unit_map("D2", [r], [t])[0, 0] for r, t in zip(rot, tilt)])
    assert inside.all()
    # ... and the ab initio run's own report, imposed C1, says so on its plot's caption
    sub = {im["src"]: im["alt"] for im in _render(chromium, demo_dir / "abinitio" / "report.html",
                                                   tmp_path / "profile")}
    assert "asymmetric unit of C1" in sub["angles.png"]


@pytest.fixture(scope="module")
def heterogeneity_report(tmp_path_factory) -> Path:
    """``heterogeneity train`` + ``analyze`` on 150 particles of two EMPIAR-10076 states."""
    maps = Path(__file__).resolve().parents[3] / "shared" / "data" / "maps"
    root = tmp_path_factory.mktemp("report_browser_het")
    mix = root / "mix"
    assert main(["simulate", "--map", str(maps / "10076_classD_32.mrc"), "--map", str(maps / "10076_classE_32.mrc"),
                 "--map-pixel-size", "13.1", "--class-fractions", "0.6,0.4", "-n", "150", "--snr", "2",
                 "-o", str(mix), "--seed", "4"]) == 0
    run = root / "run"
    assert main(["heterogeneity", "train", str(mix.with_suffix(".star")), "-o", str(run), "--zdim", "2",
                 "--no-progress", "--threads", "1"]) == 0
    assert main(["heterogeneity", "analyze", str(run)]) == 0
    return run / "analysis" / "report.html"


def test_heterogeneity_report_renders_every_image(heterogeneity_report, chromium, tmp_path):
    """The heterogeneity report: every image loads in Chromium, every file it names exists, and
    the UMAP by class and by the true class and the class sizes are there."""
    path = heterogeneity_report
    refs = _references(path)
    missing = [v for _, v in refs if not (path.parent / v).is_file()]
    assert not missing, f"report names files that do not exist: {missing}"
    images = _render(chromium, path, tmp_path / "profile")
    srcs = {im["src"] for im in images}
    assert {"umap_classes.png", "umap_truth.png", "class_sizes.png"} <= srcs
    assert srcs == {v for tag, v in refs if tag == "img"}
    broken = [im["src"] for im in images if im["width"] <= 0]
    assert not broken, f"images that did not load in Chromium: {broken}"
