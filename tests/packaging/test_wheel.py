"""A non-editable install works from any directory: sql/ and migrations/ ship in the wheel."""

from __future__ import annotations

import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import pg_url
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("datalayer-*.whl")
    return built


@pytest.fixture
def new_dbname() -> Iterator[str]:
    name = f"dl_wheel_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_the_wheel_carries_every_sql_file_and_migration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, prefix in (
        ("sql", "datalayer/_data/sql/"),
        ("migrations", "datalayer/_data/migrations/"),
    ):
        for path in (ROOT / folder).glob("*.sql"):
            assert prefix + path.name in names
    assert "datalayer/py.typed" in names


@pytest.mark.slow
def test_a_fresh_venv_imports_and_migrates_from_another_directory(
    wheel: Path, tmp_path: Path, new_dbname: str
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=600,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import datalayer, pathlib; "
        "from datalayer._resources import sql_dir; "
        "print(pathlib.Path(datalayer.__file__).parent.parent != pathlib.Path.cwd(), sql_dir())"
    )
    shown = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        cwd=elsewhere,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert shown.startswith("True ")
    assert "site-packages/datalayer/_data/sql" in shown
    migrated = subprocess.run(
        [str(venv / "bin" / "datalayer"), "--database-url", pg_url(new_dbname), "migrate"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0001_accounts_users" in migrated.stdout
