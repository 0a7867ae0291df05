"""Reading an uploaded file within the byte limit (the gate has refused larger bodies already)."""

from __future__ import annotations

from fastapi import UploadFile

from search_api.errors import FieldError


async def read_limited(file: UploadFile, max_bytes: int) -> bytes:
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FieldError(413, ("body", "file"), f"the upload exceeds the limit of {max_bytes} bytes", "too_large")
    return data
