"""Files repository (``sql/files.sql``)."""

from __future__ import annotations

from .._repository import Repository


class FileRepository(Repository):
    """Uploaded files: metadata and processing status."""

    aggregate = "files"
