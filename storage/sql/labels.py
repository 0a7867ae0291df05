"""The `image_labels` table beside `images.labels` (migration 0008): written with the images, checked and
repaired by `verify` (part of storage.sql.repository.Repository)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from storage.sql.db import database_errors
from storage.sql.models import ImageLabelRow, ImageRow, label_key

BATCH = 10_000


def label_keys(labels: Sequence[str] | None) -> list[str]:
    """The distinct keys of an image's labels, as `image_labels` holds them."""
    return sorted({label_key(str(label)) for label in labels or ()})


def write_labels(session: Session, labels: Sequence[tuple[int, Sequence[str] | None]], replace: bool = False) -> None:
    """The `image_labels` rows of images (id, labels as given), in the caller's transaction. `replace`: the
    images may have rows already."""
    if replace:
        session.execute(delete(ImageLabelRow).where(ImageLabelRow.image_id.in_([i for i, _ in labels])))
    session.add_all(ImageLabelRow(image_id=image_id, label=key) for image_id, given in labels
                    for key in label_keys(given))


class LabelsMixin:
    engine: Engine
    _sessions: sessionmaker[Session]

    def label_problems(self) -> list[int]:
        """Ids of the images whose `image_labels` rows differ from their labels (a batch of ids at a time)."""
        wrong: list[int] = []
        last = 0
        with database_errors(self.engine), self._sessions() as session:
            while True:
                rows = session.execute(select(ImageRow.id, ImageRow.labels).where(ImageRow.id > last)
                                       .order_by(ImageRow.id).limit(BATCH)).all()
                if not rows:
                    break
                high = int(rows[-1][0])
                held: dict[int, list[str]] = {}
                for image_id, key in session.execute(select(ImageLabelRow.image_id, ImageLabelRow.label).where(
                        ImageLabelRow.image_id > last, ImageLabelRow.image_id <= high)):
                    held.setdefault(int(image_id), []).append(key)
                ids = {int(image_id) for image_id, _ in rows}
                wrong.extend(int(image_id) for image_id, labels in rows
                             if sorted(held.get(int(image_id), [])) != label_keys(labels))
                # rows of no image: left by a delete without foreign keys
                wrong.extend(image_id for image_id in held if image_id not in ids)
                last = high
            wrong.extend(int(i) for i in session.scalars(select(ImageLabelRow.image_id).where(
                ImageLabelRow.image_id > last).distinct()))  # past the last image
        return sorted(wrong)

    def repair_labels(self, image_ids: Sequence[int]) -> None:
        """Write the `image_labels` rows of these images again from their labels."""
        with database_errors(self.engine), self._sessions() as session, session.begin():
            for start in range(0, len(image_ids), BATCH):
                chunk = [int(i) for i in image_ids[start:start + BATCH]]
                found = dict(session.execute(select(ImageRow.id, ImageRow.labels).where(ImageRow.id.in_(chunk))).all())
                session.execute(delete(ImageLabelRow).where(ImageLabelRow.image_id.in_(chunk)))
                write_labels(session, [(image_id, found[image_id]) for image_id in chunk if image_id in found])
