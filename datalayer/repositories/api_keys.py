"""API keys repository (``sql/api_keys.sql``)."""

from __future__ import annotations

from .._repository import Repository


class ApiKeyRepository(Repository):
    """API keys for enterprise access; secrets are never stored."""

    aggregate = "api_keys"
