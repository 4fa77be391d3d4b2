"""The "Differences from the authors' code" appendix names, for each difference, the test that checks it.

Each named test must exist, so a renamed or deleted test cannot leave the appendix pointing at nothing.
A cell lists ``test_file.py::test_a`` and may continue with bare ``test_b`` names from the same file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPENDIX = ROOT / "book" / "appendix" / "differences.md"


def _named_tests() -> list[tuple[str, str]]:
    pairs = []
    for line in APPENDIX.read_text().splitlines():
        if not line.startswith("|"):
            continue
        for cell in line.split("|"):
            current = None
            for ref in re.findall(r"`([A-Za-z0-9_.:]+)`", cell):
                if "::" in ref:
                    current, name = ref.split("::", 1)
                elif current is not None and ref.startswith("test_"):
                    name = ref
                else:
                    continue
                pairs.append((current, name))
    return pairs


def _functions(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}


def test_appendix_names_tests() -> None:
    assert len(_named_tests()) >= 10


def test_every_test_the_appendix_names_exists() -> None:
    missing = []
    cache: dict[str, set[str]] = {}
    for file, name in _named_tests():
        path = ROOT / "tests" / file
        if not path.exists():
            missing.append(f"{file} (no such file)")
            continue
        funcs = cache.setdefault(file, _functions(path))
        if name not in funcs:
            missing.append(f"{file}::{name}")
    assert not missing, f"differences.md names tests that do not exist: {missing}"
