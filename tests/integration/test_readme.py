"""The README stays true: its Python examples run, its excerpts match the source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
RUNNABLE = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
EXCERPTS = re.findall(r"```py\n# (\S+) \(excerpt\)\n(.*?)```", README, re.DOTALL)


def test_the_readme_has_examples_to_check() -> None:
    assert len(RUNNABLE) >= 2
    assert EXCERPTS


@pytest.mark.parametrize("code", RUNNABLE, ids=[f"example{i}" for i in range(len(RUNNABLE))])
def test_each_python_example_runs_against_a_fresh_database(
    code: str, fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_url)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102


@pytest.mark.parametrize(("path", "code"), EXCERPTS)
def test_each_excerpt_matches_its_source_file(path: str, code: str) -> None:
    source = (ROOT / path).read_text()
    for line in code.splitlines():
        if line.strip():
            assert line in source, f"{path} no longer contains: {line!r}"
