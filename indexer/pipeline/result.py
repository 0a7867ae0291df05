"""What a run reports: its counts and times (RunResult), and where it reports progress to."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from storage.records import FileIssue


class Progress:
    """What a run reports to; the CLI supplies a tqdm bar, library callers may pass nothing."""

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, **counts: int) -> None:
        pass

    def close(self) -> None:
        pass


ProgressFactory = Callable[[int], Progress]


@dataclass
class RunResult:
    run_id: int
    archive: str
    indexed: int = 0  # new images (one per distinct pixels in a patient's study)
    encoded: int = 0  # of them, pixels the model encoded in this run (the others got a stored vector)
    linked: int = 0  # new sources of images already indexed (duplicates, moved files): not encoded
    unchanged: int = 0  # files left alone
    skipped: int = 0  # not images, objects without pixels, excluded
    failed: int = 0
    pruned: int = 0  # sources removed because their files are gone (--prune)
    units: int = 0  # work units committed (Ray engine)
    resumed: int = 0  # of them, shards a killed run had left, committed without encoding again
    seconds: float = 0.0
    stage_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    issues: list[FileIssue] = field(default_factory=list)
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    @property
    def nothing_indexable(self) -> bool:
        return self.indexed == 0 and self.linked == 0 and self.unchanged == 0
