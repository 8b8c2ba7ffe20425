"""README's layout section names every subpackage and module, and tests/ mirrors the package."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "goalclip"


def _layout_entries() -> dict[str, str]:
    """``{subpackage: its text}`` from the README's layout block (an entry runs until the next ``name/``)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[: block.index("```")]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"^\s{2}(\w+)/\s", line)
        if match:
            current = match.group(1)
            entries[current] = line[match.end():]
        elif current and line.startswith(" " * 16):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def _modules(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.py") if not p.stem.startswith("__")}


def test_readme_layout_names_every_subpackage_and_module() -> None:
    entries = _layout_entries()
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert set(entries) == subpackages
    for name, text in entries.items():
        words = set(re.findall(r"\w+", text))
        missing = sorted(_modules(PACKAGE / name) - words)
        assert not missing, f"README layout, {name}/: modules not named: {missing}"


def test_test_folders_mirror_the_package() -> None:
    """Each tests/<name>/ is a subpackage of goalclip, or one of the few folders for what is outside it."""
    outside = {"reliability", "docs", "benchmarks", "package"}
    folders = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders - outside <= subpackages, sorted(folders - outside - subpackages)
