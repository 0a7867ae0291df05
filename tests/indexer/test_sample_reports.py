"""The sample archive that `make demo` indexes: every report written for it reaches the index, so that the
The README tour's report searches (a present and a negated pleural effusion) answer on the demo."""

from __future__ import annotations

from pathlib import Path

from core.model.encoder import HFEncoder
from indexer.sample import REPORTS, build_sample_archive
from storage.opening import open_index
from tests.conftest import index_folder


def test_every_sample_report_is_on_an_indexed_image(encoder: HFEncoder, tmp_path: Path):
    archive = build_sample_archive(tmp_path / "sample.zip")[0]
    result = index_folder(archive, tmp_path / "db", encoder)
    assert result.indexed > 40
    with open_index(tmp_path / "db", read_only=True) as (_, repository):
        images = repository.get_images(repository.image_ids().tolist()).values()
        stored = {image.metadata.report_text for image in images}
    missing = [prefix for prefix, _, report in REPORTS if report not in stored]
    assert missing == []  # a report given only to a copy the indexer linked would be lost
