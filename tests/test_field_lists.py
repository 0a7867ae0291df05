"""The image metadata field list is defined once (core.imaging.metadata) and mirrored where a package may not
import core: these tests prove every copy equals it, so a field added in one place and forgotten in
another fails here."""

from __future__ import annotations

from dataclasses import fields

from core.imaging.metadata import COMPUTED_FIELDS, IDENTIFIER_FIELDS, MANIFEST_FIELDS, METADATA_FIELDS, ImageMetadata
from indexer.pipeline.manifest import PARSERS, parse_manifest
from search_api.schemas.search import ImageMetadataOut, Source
from search_api.security.redact import IDENTIFIERS
from storage.records import METADATA_FIELDS as STORED_FIELDS
from storage.records import SOURCE_FIELDS, SOURCE_IDENTIFIERS, Metadata, StoredSource
from storage.sql.models import ImageRow, SourceRow


def test_storage_mirrors_core():
    assert STORED_FIELDS == METADATA_FIELDS
    core_types = {f.name: str(f.type) for f in fields(ImageMetadata) if f.name != "frame_index"}
    assert {f.name: str(f.type) for f in fields(Metadata)} == core_types


def test_database_columns_hold_every_field():
    columns = set(ImageRow.__table__.columns.keys())
    assert set(METADATA_FIELDS) <= columns
    assert columns - set(METADATA_FIELDS) == {"id", "pixel_sha256", "case_key", "kind", "run_id", "indexed_at"}
    assert set(SOURCE_IDENTIFIERS) <= set(SourceRow.__table__.columns.keys())
    assert set(SOURCE_FIELDS) <= set(SourceRow.__table__.columns.keys())


def test_api_schema_has_every_field():
    assert tuple(ImageMetadataOut.model_fields) == METADATA_FIELDS
    stored = {f.name for f in fields(StoredSource)} - {"id"}
    assert set(Source.model_fields) - {"url", "viewer_url"} == stored


def test_manifest_columns_are_the_settable_fields():
    assert set(PARSERS) | {"labels", "extra"} == set(MANIFEST_FIELDS)
    assert not set(MANIFEST_FIELDS) & set(COMPUTED_FIELDS)
    header = ",".join(["path", *(name for name in PARSERS)])
    values = {"patient_age": "7.5", "instance_number": "3", "study_date": "2024-01-31", "burned_in_annotation": "yes"}
    row = ",".join(["a.png", *(values.get(name, f"v-{name}") for name in PARSERS)])
    parsed = parse_manifest(f"{header}\n{row}\n".encode(), "manifest.csv")["a.png"]
    assert set(parsed.values) == set(PARSERS) - {"report_text"} and parsed.report_text == "v-report_text"
    assert parsed.values["burned_in_annotation"] is True and parsed.values["instance_number"] == 3


def test_researchers_never_see_an_identifier_in_plain():
    assert set(IDENTIFIERS) == set(IDENTIFIER_FIELDS) == set(SOURCE_IDENTIFIERS)


def test_every_setting_is_in_the_manual():
    from pathlib import Path

    from core.settings import Settings

    page = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"MEDSEARCH_{name.upper()}" not in page]
    assert missing == []
