"""One typed settings object, read from arguments, the environment (prefix ``MEDSEARCH_``) or a .env file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.imaging.dicom import WINDOW_PRESETS, RenderOptions, check_window_option, select_frames
from core.imaging.metadata import RESEARCHER_DEFAULT_FIELDS, check_field_names
from core.sources.dicomweb_locations import DicomWebConfig, check_viewer_template

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
    batch_size: int = Field(default=0, ge=0, le=4096, description="Images a forward pass; 0: auto (core.model.device).")
    compile_model: bool = Field(default=False, description="torch.compile the image tower.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="Model precision: auto = bf16/fp16 on a GPU, fp32 on a CPU.")
    quantize: Literal["int8"] | None = Field(default=None, description="Dynamic int8 quantization (CPU).")
    workers: int | None = Field(default=None, ge=0, le=256, description="Decoding worker processes "
                                "(default: one per core but one, 0 = decode in the main process).")
    checkpoint_seconds: float = Field(default=30.0, ge=0, description="Save the FAISS index at least this often "
                                      "during a run (the database is always committed per batch).")

    # Where an indexing run runs: this machine, or a Ray cluster (pip install -e ".[ray]").
    engine: Literal["local", "ray"] = Field(default="local", description="local: worker processes of this machine; "
                                            "ray: a Ray cluster (a local one on loopback unless ray_address is set).")
    ray_address: str | None = Field(default=None, description="HOST:PORT of a running Ray cluster's head (its GCS "
                                    "port); unset: start a local cluster on loopback for the run.")
    ray_encoders: int | None = Field(default=None, ge=1, le=4096, description="Encoding actors, one model load each "
                                     "(default: one per GPU of the cluster, else 1).")
    ray_unit_files: int = Field(default=32, ge=1, le=100_000, description="Files per work unit (and shard).")
    ray_shard_dir: Path | None = Field(default=None, description="Where actors write finished units (default "
                                       "DB/shards); on several nodes, a folder every node mounts.")
    ray_stall_timeout_s: float = Field(default=600.0, gt=0, description="A run that makes no progress this long "
                                       "(a stage the cluster cannot schedule) stops with an error.")
    ray_decode_cpus: float = Field(default=1.0, gt=0, description="CPUs each decoding task reserves.")
    ray_encoder_cpus: float = Field(default=1.0, gt=0, description="CPUs each encoding actor reserves.")
    local_files_only: bool = Field(default=False, description="Never contact the model hub; use the cache.")

    # Image loading.
    max_image_pixels: int = Field(default=100_000_000, ge=1, description="Refuse images with more pixels "
                                  "(rows x columns x frames) than this, before decoding.")
    max_file_bytes: int = Field(default=1024**3, ge=1024, description="Refuse files (and archive members) "
                                "larger than this before reading them; zip members that inflate more than "
                                "200-fold beyond 64 MiB are refused too.")
    fallback_window_percentiles: tuple[float, float] = Field(
        default=(0.5, 99.5), description="Percentile window used when a DICOM header carries no VOI window."
    )
    window_presets: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(WINDOW_PRESETS), description="CT window presets, name -> (centre, width)."
    )
    window: str = Field(default="auto", description="DICOM greyscale window: auto, header, percentile, a "
                        "preset name (lung, mediastinum, bone, brain, abdomen), CENTER/WIDTH, or ct-channels "
                        "(CT in three windows, the colour channels MedSigLIP was trained with).")
    frames: str = Field(default="middle", description="Multi-frame policy: middle, first, all or every:N.")

    # De-identification at index time.
    deidentify: bool = Field(default=False, description="Store keyed pseudonyms instead of patient IDs and "
                             "accession numbers.")
    deid_secret: SecretStr | None = Field(default=None, description="Key of the pseudonyms (>= 16 characters).")
    deid_keep_columns: list[str] = Field(default_factory=list, description="De-identifying: manifest columns "
                                         "(beyond the known fields) kept in `extra`; every other one is not stored.")
    deid_keep_reports: bool = Field(default=False, description="De-identifying: store report text. Reports name "
                                    "patients and dates: they are identifying, so the default drops them.")

    # DICOMweb sources (a PACS): credentials and connection. Never put credentials in the URL.
    dicomweb_token: SecretStr | None = Field(default=None, description="Bearer token for the DICOMweb server.")
    dicomweb_username: str | None = Field(default=None, description="Basic-auth user for the DICOMweb server.")
    dicomweb_password: SecretStr | None = Field(default=None, description="Basic-auth password.")
    dicomweb_verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    dicomweb_ca_bundle: Path | None = Field(default=None, description="CA file or folder to verify it with "
                                            "(the hospital's own CA).")
    dicomweb_timeout_s: float = Field(default=30.0, gt=0, description="Seconds to wait for one answer.")
    dicomweb_retries: int = Field(default=3, ge=0, le=20, description="Further attempts after a timeout, a "
                                  "lost connection or a 5xx/429 answer, with exponential backoff.")
    dicomweb_backoff_s: float = Field(default=1.0, ge=0, description="First wait between attempts (doubles).")
    dicomweb_fetch_threads: int = Field(default=4, ge=1, le=64, description="Instances fetched in parallel.")
    dicomweb_lookback_days: int = Field(default=1, ge=0, le=3650, description="--since last lists studies "
                                        "dated from this many days before the last complete run.")
    viewer_url_template: str | None = Field(
        default=None, description="Link from a result to its study in the PACS viewer, for example "
        "https://pacs.example.org/ohif/viewer?StudyInstanceUIDs={study_uid} (placeholders: {study_uid}, "
        "{series_uid}, {sop_uid}, {dicomweb_url}).")

    # Search API.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names the API answers to (a "
                                     "Host header check against DNS rebinding): names, *.domain, or * for any. "
                                     "Default: localhost, 127.0.0.1, ::1 and --host. Open mode: loopback only.")
    max_k: int = Field(default=1000, ge=1)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="Largest upload (/search/image, "
                                  "/classify); larger ones get 413 before they are read.")
    max_upload_pixels: int = Field(default=4096 * 4096, ge=1, description="Largest uploaded image (rows x columns "
                                   "x frames), refused from its header before decoding.")
    decode_slots: int = Field(default=2, ge=1, le=64, description="Uploads and previews decoded at once; the "
                              "API's decoding memory stays under about decode_slots x 34 bytes x the pixel limit.")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Largest body of every other request.")
    auth_failure_limit: int = Field(default=10, ge=1, description="Failed authentications per client address and "
                                    "minute before it gets 429 answers.")
    researcher_fields: list[str] = Field(
        default_factory=lambda: list(RESEARCHER_DEFAULT_FIELDS), description="Metadata fields the researcher role "
        "sees (identifiers are always pseudonyms for it); extra.COLUMN for a manifest column.")

    text_cache_size: int = Field(default=1024, ge=0, description="Text queries whose embedding is kept.")
    preview_cache_size: int = Field(default=256, ge=0, description="Rendered previews kept in memory.")
    review_min_probability: float = Field(default=0.5, ge=0, le=1, description="/classify asks for a human "
                                          "when the top label's probability is below this.")
    review_max_entropy: float = Field(default=0.85, ge=0, le=1, description="/classify asks for a human when "
                                      "the normalised entropy of the label distribution is above this.")

    request_timeout_s: float = Field(default=60.0, gt=0, description="Requests running longer get a 503.")
    count_limit: int = Field(default=20_000, ge=100, description="Facets and grouped totals count at most this "
                             "many matching images (the first by id) and say so (`facets_counted`, "
                             "`total_at_least`): their cost stays bounded however large the archive.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API from "
                                    "a browser (none by default: the API's own page needs none).")
    access_database_url: str | None = Field(default=None, description="Database of API keys and the audit "
                                            "log (default DIR/access.sqlite).")

    # Reports: the vocabulary of findings and anatomy, and ConText's rules (core/reports), extended by a site.
    report_vocabulary: Path | None = Field(default=None, description="A CSV of terms added to the shipped "
                                           "vocabulary (columns kind, term, synonyms, parent).")
    report_context_rules: Path | None = Field(default=None, description="A JSON file of ConText rules added to the "
                                              "shipped ones (medspaCy's format, {\"context_rules\": [...]}).")

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

    @field_validator("researcher_fields")
    @classmethod
    def _researcher_fields(cls, value: list[str]) -> list[str]:
        return check_field_names(value)

    @field_validator("viewer_url_template")
    @classmethod
    def _viewer_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_viewer_template(value)
        return value

    def dicomweb_config(self) -> DicomWebConfig:
        return DicomWebConfig(
            token=self.dicomweb_token.get_secret_value() if self.dicomweb_token else None,
            username=self.dicomweb_username,
            password=self.dicomweb_password.get_secret_value() if self.dicomweb_password else None,
            verify_tls=self.dicomweb_verify_tls,
            ca_bundle=str(self.dicomweb_ca_bundle) if self.dicomweb_ca_bundle else None,
            timeout_s=self.dicomweb_timeout_s, retries=self.dicomweb_retries, backoff_s=self.dicomweb_backoff_s,
            fetch_threads=self.dicomweb_fetch_threads)

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
