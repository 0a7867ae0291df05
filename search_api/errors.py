"""The API's errors and the one place where every package's error root becomes an HTTP answer.

Answers keep FastAPI's shape, `{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`, and never
carry a file path or a patient identifier (messages of core and storage errors name files: those
are logged for the operator, not sent)."""

from __future__ import annotations

import logging
from typing import Any

from core.errors import ImageError, ImageTooLargeError, MedsearchError, NoPixelDataError, NotAnImageError
from storage.errors import StorageError

logger = logging.getLogger(__name__)


class SearchError(Exception):
    """Root of the errors the API raises itself."""

    status = 400
    kind = "bad_request"

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.loc = loc


class UnknownImageError(SearchError):
    """A request named an image id that is not indexed."""

    status, kind = 404, "not_found"

    def __init__(self, image_id: int, loc: tuple[str | int, ...] = ("body", "image_id")) -> None:
        super().__init__(f"no image with id {image_id}", loc)
        self.image_id = image_id


class PreviewError(SearchError):
    """The file recorded for an image can no longer be read or rendered."""

    status, kind = 404, "source_unreadable"


class FieldError(SearchError):
    """A request field the schema accepts but the request cannot be answered with."""

    def __init__(self, status: int, loc: tuple[str | int, ...], message: str, kind: str) -> None:
        super().__init__(message, loc)
        self.status, self.kind = status, kind


UPLOAD = ("body", "file")


def status_of(exc: BaseException) -> int:
    """The HTTP status an exception becomes (see http_error)."""
    if isinstance(exc, SearchError):
        return exc.status
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, ImageError):
        return 422
    return 503 if isinstance(exc, StorageError | MedsearchError) else 500


def http_error(exc: Exception) -> tuple[int, dict[str, Any]]:
    """(status, body) for an error of ours; 500 for anything else (logged, never sent)."""
    if isinstance(exc, SearchError):
        return exc.status, _body(list(exc.loc), str(exc), exc.kind)
    if isinstance(exc, ImageTooLargeError):
        return 413, _body(list(UPLOAD), exc.reason, "too_large")
    if isinstance(exc, NotAnImageError):
        return 422, _body(list(UPLOAD), exc.reason, "not_an_image")
    if isinstance(exc, NoPixelDataError):
        return 422, _body(list(UPLOAD), f"DICOM without an image: {exc.reason}", "no_pixel_data")
    if isinstance(exc, ImageError):
        return 422, _body(list(UPLOAD), f"unreadable image: {exc.reason}", "unreadable_image")
    if isinstance(exc, StorageError | MedsearchError):
        logger.error("the index cannot answer: %s", exc)
        return 503, _body([], "the index cannot answer right now; the operator's log says why", "unavailable")
    logger.exception("unexpected error")
    return 500, _body([], "internal error", "internal")


def _body(loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"loc": loc, "msg": msg, "type": kind}]}
