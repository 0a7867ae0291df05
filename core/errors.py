"""Typed exceptions raised by core. Only the CLI and the API turn them into exit codes or HTTP errors."""

from __future__ import annotations


class MedsearchError(Exception):
    """Base class of every error medsearch raises on purpose."""


class ImageError(MedsearchError):
    """An image could not be read. `source` names the file (or upload field); `reason` says why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class NotAnImageError(ImageError):
    """The bytes are not a DICOM, PNG or JPEG image (for example a text file in an archive)."""


class NoPixelDataError(ImageError):
    """A valid DICOM object that carries no image (structured report, RT plan, DICOMDIR...)."""


class ImageTooLargeError(ImageError):
    """The image's declared size exceeds the configured pixel limit; it was refused before decoding."""


class ArchiveError(MedsearchError):
    """An archive (folder, zip, tar) is missing or unreadable."""


class ModelLoadError(MedsearchError):
    """The encoder's checkpoint could not be loaded (not found, offline, gated, wrong kind of model)."""
