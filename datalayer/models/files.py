"""File: an uploaded file's metadata and where it is in processing."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

FileStatus = Literal["pending", "uploaded", "processing", "ready", "failed", "deleted"]


class File(BaseModel):
    """One row of ``files``.

    ``attempts`` counts claims; the value a claim returns is that claim's
    fencing token (``complete``/``fail``/``renew_lease`` take it as ``attempt``).
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    uploaded_by: int | None
    storage_key: str
    file_name: str
    content_type: str
    size_bytes: int | None
    checksum_sha256: str | None
    status: FileStatus
    attempts: int
    max_attempts: int
    lease_expires_at: datetime | None
    processing_ms: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    uploaded_at: datetime | None
    processed_at: datetime | None
    deleted_at: datetime | None
