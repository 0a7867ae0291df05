"""Runs and what they could not index, and what the database knows of an archive's files (part of
storage.sql.repository.Repository)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.records import FileIssue, FileState, RunSummary
from storage.sql.db import database_errors
from storage.sql.meta import utcnow
from storage.sql.models import RunErrorRow, RunRow, SourceRow


def _summary(r: RunRow) -> RunSummary:
    return RunSummary(id=r.id, archive=r.archive, status=r.status, indexed=r.indexed, unchanged=r.unchanged,
                      skipped=r.skipped, failed=r.failed, seconds=r.seconds, started_at=r.started_at,
                      finished_at=r.finished_at)


class RunsMixin:
    engine: Engine
    _sessions: sessionmaker[Session]

    def archive_state(self, archive: str) -> dict[str, FileState]:
        """path -> what is known of it: its sources, or the issue of its last attempt."""
        state: dict[str, FileState] = {}
        with database_errors(self.engine), self._sessions() as session:
            for source_id, path, sha, size, mtime in session.execute(
                select(SourceRow.id, SourceRow.path, SourceRow.file_sha256, SourceRow.size, SourceRow.mtime)
                .where(SourceRow.archive == archive)
            ):
                known = state.setdefault(path, FileState([], sha, size, mtime))
                known.source_ids.append(source_id)
            latest = (select(RunErrorRow.path, func.max(RunErrorRow.id).label("last"))
                      .where(RunErrorRow.archive == archive).group_by(RunErrorRow.path).subquery())
            for row in session.scalars(select(RunErrorRow).join(latest, RunErrorRow.id == latest.c.last)):
                if row.path not in state:
                    issue = FileIssue(row.archive, row.path, row.kind, row.reason, row.size, row.mtime,
                                      row.file_sha256)
                    state[row.path] = FileState([], row.file_sha256, row.size, row.mtime, issue=issue)
        return state

    def start_run(self, archive: str, fingerprint_key: str | None) -> int:
        with database_errors(self.engine), self._sessions() as session, session.begin():
            # a run still marked running was killed: it never finished
            session.execute(update(RunRow).where(RunRow.status == "running").values(status="killed"))
            row = RunRow(archive=archive, fingerprint_key=fingerprint_key, started_at=utcnow(), status="running",
                         indexed=0, unchanged=0, skipped=0, failed=0)
            session.add(row)
            session.flush()
            return row.id

    def record_issues(self, run_id: int, issues: Sequence[FileIssue]) -> None:
        if not issues:
            return
        with database_errors(self.engine), self._sessions() as session, session.begin():
            session.add_all(RunErrorRow(run_id=run_id, archive=i.archive, path=i.path, kind=i.kind,
                                        reason=i.reason, size=i.size, mtime=i.mtime, file_sha256=i.file_sha256)
                            for i in issues)

    def update_run(self, run_id: int, *, indexed: int, unchanged: int, skipped: int, failed: int,
                   status: str | None = None, seconds: float | None = None) -> None:
        """The run's counts so far (a killed run shows what it committed); with `status`, its end."""
        with database_errors(self.engine), self._sessions() as session, session.begin():
            row = session.get(RunRow, run_id)
            if row is None:
                return
            row.indexed, row.unchanged, row.skipped, row.failed = indexed, unchanged, skipped, failed
            if status is not None:
                row.status, row.seconds, row.finished_at = status, seconds, utcnow()

    def finish_run(self, run_id: int, *, status: str, indexed: int, unchanged: int, skipped: int, failed: int,
                   seconds: float) -> None:
        self.update_run(run_id, indexed=indexed, unchanged=unchanged, skipped=skipped, failed=failed,
                        status=status, seconds=seconds)

    def list_runs(self) -> list[RunSummary]:
        with database_errors(self.engine), self._sessions() as session:
            return [_summary(r) for r in session.scalars(select(RunRow).order_by(RunRow.id)).all()]

    def get_run(self, run_id: int) -> RunSummary | None:
        with database_errors(self.engine), self._sessions() as session:
            row = session.get(RunRow, run_id)
            return _summary(row) if row is not None else None

    def run_issues(self, run_id: int) -> list[FileIssue]:
        with database_errors(self.engine), self._sessions() as session:
            rows = session.scalars(select(RunErrorRow).where(RunErrorRow.run_id == run_id)
                                   .order_by(RunErrorRow.id)).all()
            return [FileIssue(archive=r.archive, path=r.path, kind=r.kind, reason=r.reason, size=r.size,
                              mtime=r.mtime, file_sha256=r.file_sha256) for r in rows]
