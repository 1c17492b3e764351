"""The README's promises and the documentation's references, checked without building the site.

``mkdocs build --strict`` (run by ``.ci/run``) is the full check; these fast tests catch the
usual breakages earlier: the README's first commands drifting, README growing back into a
results log, an API page naming a module that was renamed or removed, a CLI option in the
README's "Your own data" session that the command no longer has.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cryopose.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def test_readme_starts_with_setup_demo_and_test_commands():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block is not None and text.index("```bash") < text.index("\n## ")
    commands = [ln for ln in first_block.group(1).splitlines() if ln and not ln.startswith("#")]
    assert commands == ["bash scripts/setup.sh && cryopose demo -o demo_out", "python3 -m pytest -q"]
    assert len(text.splitlines()) <= 150


def _module_path(name: str) -> list[Path]:
    rel = Path("src", *name.split("."))
    return [ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"]


def test_api_reference_modules_exist():
    names = [m for page in sorted((DOCS / "reference").glob("*.md"))
             for m in re.findall(r"^::: (\S+)$", page.read_text(encoding="utf-8"), re.M)]
    assert len(names) > 20
    missing = [n for n in names if not any(p.is_file() for p in _module_path(n))]
    assert not missing, f"docs/reference names modules that do not exist: {missing}"


def _readme_session() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    block = text.split("## Your own data", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [shlex.split(ln, comments=True) for ln in joined.splitlines()
            if ln.strip().startswith("cryopose ")]


def _options(parser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


@pytest.mark.parametrize("argv", _readme_session(), ids=lambda a: a[1])
def test_readme_session_options_exist(argv):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    command = sub.choices[argv[1]]
    used = {a for a in argv[2:] if a.startswith("-")}
    assert used <= _options(command), f"cryopose {argv[1]} has no {sorted(used - _options(command))}"
