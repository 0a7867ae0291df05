"""One typed settings object, read from arguments, the environment (prefix ``MEDSEARCH_``) or a .env file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.dicom import WINDOW_PRESETS, RenderOptions, check_window_option, select_frames

DEFAULT_MODEL = "google/medsiglip-448"

Device = Literal["auto", "cpu", "cuda", "mps"]


class Settings(BaseSettings):
    """Everything a deployment can tune. Deep modules take plain arguments, not this object."""

    model_config = SettingsConfigDict(env_prefix="MEDSEARCH_", env_file=".env", extra="ignore")

    # Where the metadata database (medsearch.sqlite) and the FAISS index (index.faiss) live.
    db_dir: Path = Field(default=Path("medsearch-db"), description="Folder holding the database and index.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL of the metadata database, for "
                                     "example postgresql+psycopg://user@host/medsearch (default: SQLite in db_dir).")

    # Encoder.
    model: str = Field(default=DEFAULT_MODEL, description="Hugging Face hub id or local folder of a "
                       "SigLIP/CLIP checkpoint.")
    model_revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    device: Device = "auto"
    batch_size: int = Field(default=16, ge=1, le=4096)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="Model precision: auto = bf16/fp16 on a GPU, fp32 on a CPU.")
    quantize: Literal["int8"] | None = Field(default=None, description="Dynamic int8 quantization (CPU).")
    workers: int | None = Field(default=None, ge=0, le=256, description="Decoding worker processes "
                                "(default: one per core but one, 0 = decode in the main process).")
    checkpoint_seconds: float = Field(default=30.0, ge=0, description="Save the FAISS index at least this often "
                                      "during a run (the database is always committed per batch).")
    local_files_only: bool = Field(default=False, description="Never contact the model hub; use the cache.")

    # Image loading.
    max_image_pixels: int = Field(default=100_000_000, ge=1, description="Refuse images with more pixels "
                                  "(rows x columns x frames) than this, before decoding.")
    fallback_window_percentiles: tuple[float, float] = Field(
        default=(0.5, 99.5), description="Percentile window used when a DICOM header carries no VOI window."
    )
    window_presets: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(WINDOW_PRESETS), description="CT window presets, name -> (centre, width)."
    )
    window: str = Field(default="auto", description="DICOM greyscale window: auto, header, percentile, a "
                        "preset name (lung, mediastinum, bone, brain, abdomen) or CENTER/WIDTH.")
    frames: str = Field(default="middle", description="Multi-frame policy: middle, first, all or every:N.")

    # De-identification at index time.
    deidentify: bool = Field(default=False, description="Store keyed pseudonyms instead of patient IDs and "
                             "accession numbers.")
    deid_secret: SecretStr | None = Field(default=None, description="Key of the pseudonyms (>= 16 characters).")

    # Search API.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_k: int = Field(default=1000, ge=1)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    text_cache_size: int = Field(default=1024, ge=0, description="Text queries whose embedding is kept.")
    preview_cache_size: int = Field(default=256, ge=0, description="Rendered previews kept in memory.")
    review_min_probability: float = Field(default=0.5, ge=0, le=1, description="/classify asks for a human "
                                          "when the top label's probability is below this.")
    review_max_entropy: float = Field(default=0.85, ge=0, le=1, description="/classify asks for a human when "
                                      "the normalised entropy of the label distribution is above this.")

    request_timeout_s: float = Field(default=60.0, gt=0, description="Requests running longer get a 503.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API from "
                                    "a browser (none by default: the API's own page needs none).")
    access_database_url: str | None = Field(default=None, description="Database of API keys and the audit "
                                            "log (default DIR/access.sqlite).")

    log_level: str = "INFO"

    @field_validator("frames")
    @classmethod
    def _frames_policy(cls, value: str) -> str:
        select_frames(1, value)
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: str, info: ValidationInfo) -> str:
        check_window_option(value, info.data.get("window_presets", WINDOW_PRESETS))
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.deidentify:
            secret = self.deid_secret.get_secret_value() if self.deid_secret else ""
            if len(secret) < 16 or secret.lower() in {"changeme", "change-me-please", "secret" * 3}:
                raise ValueError("deidentify needs MEDSEARCH_DEID_SECRET: a private key of at least 16 "
                                 "characters (keep it: the same key keeps one patient's pseudonym stable)")
        return self

    def render_options(self) -> RenderOptions:
        return RenderOptions(window=self.window, presets=self.window_presets,
                             percentiles=self.fallback_window_percentiles, frames=self.frames,
                             max_pixels=self.max_image_pixels)

    @property
    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(0, min(8, (os.cpu_count() or 1) - 1))

    @property
    def database_path(self) -> Path:
        return self.db_dir / "medsearch.sqlite"

    @property
    def index_path(self) -> Path:
        return self.db_dir / "index.faiss"
