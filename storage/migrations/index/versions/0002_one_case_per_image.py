"""One patient and one study per image; runs count unchanged files; removals that stick.

- images.case_key (a hash of patient ID and study UID) joins the pixel hash in the unique key: the same
  pixels under two patients or two studies become two images. Existing images whose sources belonged
  to several cases are split here: the image keeps the sources of its own case; every other case gets
  a new image with a copy of the vector (nothing is encoded), the identifiers of its own first source,
  the pixel properties (rows, columns, frames, window) and no other metadata, since what was stored
  belonged to another file. Those sources are marked for re-reading (file hash and time cleared), so
  the next run over their archive reads the files again, links them without encoding and fills in
  their own metadata.
- runs.unchanged: unchanged files are no longer counted as skipped.
- exclusions: removals that later runs do not undo.
- meta database_id: a random id the FAISS index file is marked with, so that an index file copied
  from another database is noticed (and rebuilt) instead of served.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import hashlib
import json
import uuid
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

IDENTIFIERS = ("patient_id", "study_uid", "series_uid", "sop_uid", "accession_number")
PIXEL_PROPERTIES = ("rows", "columns", "frames", "window")


def case_key(patient_id: str | None, study_uid: str | None) -> str:
    return hashlib.sha256(json.dumps([patient_id, study_uid]).encode()).hexdigest()


def upgrade() -> None:
    op.add_column("images", sa.Column("case_key", sa.String(64), nullable=False, server_default=""))
    op.add_column("runs", sa.Column("unchanged", sa.Integer(), nullable=False, server_default="0"))
    op.drop_index("ix_images_pixel_sha256", table_name="images")
    op.create_index("ix_images_pixel_sha256", "images", ["pixel_sha256"])
    op.create_table(
        "exclusions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("sources", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text()),
    )
    op.create_index("ix_exclusions_digest", "exclusions", ["kind", "digest"], unique=True)
    split_mixed_images(op.get_bind())
    meta = sa.table("meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    op.execute(meta.delete().where(meta.c.key == "database_id"))
    op.execute(meta.insert().values(key="database_id", value=uuid.uuid4().hex))
    op.create_index("ix_images_case", "images", ["pixel_sha256", "case_key"], unique=True)


def split_mixed_images(bind: sa.Connection) -> None:
    meta = sa.MetaData()
    images = sa.Table("images", meta, autoload_with=bind)
    sources = sa.Table("sources", meta, autoload_with=bind)
    embeddings = sa.Table("embeddings", meta, autoload_with=bind)
    rows = {row.id: row._asdict() for row in bind.execute(sa.select(images))}
    for image_id, row in rows.items():
        bind.execute(images.update().where(images.c.id == image_id)
                     .values(case_key=case_key(row["patient_id"], row["study_uid"])))
    groups: dict[int, dict[tuple[str | None, str | None], list[sa.Row]]] = defaultdict(dict)
    for source in bind.execute(sa.select(sources).order_by(sources.c.id)):
        groups[source.image_id].setdefault((source.patient_id, source.study_uid), []).append(source)
    for image_id, by_case in groups.items():
        row = rows[image_id]
        own = (row["patient_id"], row["study_uid"])
        for number, (case, members) in enumerate(by_case.items()):
            if case == own:
                continue
            first = members[0]
            fields: dict[str, object] = {name: None for name in row if name not in (
                "id", "pixel_sha256", "kind", "run_id", "indexed_at", *PIXEL_PROPERTIES)}
            fields.update({name: getattr(first, name) for name in IDENTIFIERS})
            fields.update(labels=[], extra={}, case_key=case_key(*case))
            if number == 0 and own not in by_case:  # no source of the image's own case is left: reuse it
                bind.execute(images.update().where(images.c.id == image_id).values(**fields))
                target = image_id
            else:
                values = {name: row[name] for name in row if name != "id"} | fields
                inserted = bind.execute(images.insert().values(**values)).inserted_primary_key
                assert inserted is not None
                target = inserted[0]
                vector = bind.execute(sa.select(embeddings).where(embeddings.c.image_id == image_id)).first()
                if vector is not None:
                    bind.execute(embeddings.insert().values(image_id=target, fingerprint_key=vector.fingerprint_key,
                                                            vector=vector.vector))
            bind.execute(sources.update().where(sources.c.id.in_([m.id for m in members]))
                         .values(image_id=target, file_sha256="", mtime=None))
