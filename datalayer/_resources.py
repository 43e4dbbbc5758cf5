"""Where the SQL files and migrations are: inside the wheel, or in the source checkout."""

from __future__ import annotations

from pathlib import Path

__all__ = ["migrations_dir", "sql_dir"]

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    # A wheel carries them as package data (pyproject's force-include); an
    # editable install or a plain checkout reads the top-level folders.
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"datalayer's {name}/ folder is missing from {_PACKAGE}")


def sql_dir() -> Path:
    """The folder of named SQL files (``sql/``)."""
    return _find("sql")


def migrations_dir() -> Path:
    """The folder of yoyo migrations (``migrations/``)."""
    return _find("migrations")
