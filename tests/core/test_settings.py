from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import DEFAULT_MODEL, Settings


def test_defaults_name_the_production_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)  # no .env here
    settings = Settings()
    assert settings.model == DEFAULT_MODEL == "google/medsiglip-448"
    assert settings.device == "auto"
    assert settings.database_path == Path("medsearch-db") / "medsearch.sqlite"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDSEARCH_BATCH_SIZE", "7")
    monkeypatch.setenv("MEDSEARCH_DB_DIR", str(tmp_path / "db"))
    settings = Settings()
    assert settings.batch_size == 7
    assert settings.index_path == tmp_path / "db" / "index.faiss"
    assert "model" not in settings.model_fields_set


def test_invalid_value_names_the_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDSEARCH_DEVICE", "tpu")
    with pytest.raises(ValidationError, match="device"):
        Settings()
