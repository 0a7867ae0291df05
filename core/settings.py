"""One typed settings object, read from arguments, the environment (prefix ``MEDSEARCH_``) or a .env file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "google/medsiglip-448"

Device = Literal["auto", "cpu", "cuda", "mps"]


class Settings(BaseSettings):
    """Everything a deployment can tune. Deep modules take plain arguments, not this object."""

    model_config = SettingsConfigDict(env_prefix="MEDSEARCH_", env_file=".env", extra="ignore")

    # Where the metadata database (medsearch.sqlite) and the FAISS index (index.faiss) live.
    db_dir: Path = Field(default=Path("medsearch-db"), description="Folder holding the database and index.")

    # Encoder.
    model: str = Field(default=DEFAULT_MODEL, description="Hugging Face hub id or local folder of a "
                       "SigLIP/CLIP checkpoint.")
    model_revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    device: Device = "auto"
    batch_size: int = Field(default=16, ge=1, le=4096)
    local_files_only: bool = Field(default=False, description="Never contact the model hub; use the cache.")

    # Image loading.
    max_image_pixels: int = Field(default=100_000_000, ge=1, description="Refuse images with more pixels "
                                  "(rows x columns x frames) than this, before decoding.")
    fallback_window_percentiles: tuple[float, float] = Field(
        default=(0.5, 99.5), description="Percentile window used when a DICOM header carries no VOI window."
    )

    # Search API.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_k: int = Field(default=1000, ge=1)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    log_level: str = "INFO"

    @property
    def database_path(self) -> Path:
        return self.db_dir / "medsearch.sqlite"

    @property
    def index_path(self) -> Path:
        return self.db_dir / "index.faiss"
