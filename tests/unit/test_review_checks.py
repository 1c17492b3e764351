"""``scripts/review_checks.py`` finds long files, long functions and import circles in a tiny package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("review_checks", ROOT / "scripts" / "review_checks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n\n\ndef f():\n" + "    x = 1\n" * 10 + "    return x\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")  # a <-> sub.b at module level
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import g\n\n\n"
                              "def h():\n    from .d import g\n    return g\n")
    (pkg / "d.py").write_text("from .c import h\n" + "\n" * 30)  # c -> d only inside a function
    return pkg


def test_review_checks_find_long_files_functions_and_circles(tmp_path, capsys):
    rc = _load()
    pkg = _package(tmp_path)
    files = sorted(pkg.rglob("*.py"))
    assert [(p.name, n) for p, n in rc.long_files(files, 20)] == [("d.py", 31)]
    assert [(p.name, name, line, n) for p, name, line, n in rc.long_functions(files, 8)] == [("a.py", "f", 4, 12)]
    assert rc.import_cycles(rc.import_graph(files, pkg)) == [["pkg.a", "pkg.sub.b"]]
    assert rc.import_cycles(rc.import_graph(files, pkg, deferred=True)) == [["pkg.a", "pkg.sub.b"], ["pkg.c", "pkg.d"]]
    assert rc.main(["--root", str(pkg), "--max-lines", "40", "--max-function-lines", "20"]) == 1
    assert "pkg.a <-> pkg.sub.b" in capsys.readouterr().out
    (pkg / "sub" / "b.py").write_text("def f2():\n    from ..a import f\n    return f\n")
    assert rc.main(["--root", str(pkg), "--max-lines", "40", "--max-function-lines", "20"]) == 0


def test_the_package_itself_passes_the_review_checks(capsys):
    """What a reviewer checks (the house issue): no source file over 500 lines, no function over
    80 lines, no import circle in src/cryopose. A change that breaks one of them fails here."""
    rc = _load().main([])
    out = capsys.readouterr().out
    assert rc == 0, out
