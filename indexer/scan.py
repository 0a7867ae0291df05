"""Stage 1: scan an archive (folder, zip or tar) into entries; reading lives in core.archives, which
the API shares to read back a recorded file."""

from core.archives import Archive, Entry, ReadItem, open_archive

__all__ = ["Archive", "Entry", "ReadItem", "open_archive"]
