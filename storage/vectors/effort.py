"""How hard an approximate index searches, per kind of query.

Text queries are out of distribution for an index built on images: their nearest neighbours spread
over more inverted lists (or graph regions) than an image's, so the effort that finds an image query's
top ten misses part of a text query's (RoarGraph, PVLDB 17(11) 2024; the out-of-distribution track of
big-ann-benchmarks). `build_index` tunes one Effort per kind on queries of that kind (storage/vectors/build.py),
the index file keeps them in its header, and every search names its kind: an image, a text, or both (a
composite of an image and a text: the larger of the two efforts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

QueryKind = Literal["image", "text", "both"]
TUNED_KINDS: tuple[QueryKind, ...] = ("image", "text")
QUERY_KINDS: tuple[QueryKind, ...] = get_args(QueryKind)


@dataclass(frozen=True)
class Effort:
    """nprobe (IVF) or efSearch (HNSW), and for a compressed index the candidates re-ranked exactly
    (at least; a search for k results asks for 4k where that is more)."""

    probes: int
    rerank: int = 0

    def __post_init__(self) -> None:
        if self.probes < 1 or self.rerank < 0:
            raise ValueError(f"a search effort needs probes >= 1 and rerank >= 0 (got {self.probes}, {self.rerank})")


@dataclass(frozen=True)
class Efforts:
    """One effort per tuned kind; `text` None where the build had no text queries (text uses image's)."""

    image: Effort
    text: Effort | None = None

    def of(self, kind: QueryKind) -> Effort:
        if kind == "image" or self.text is None:
            return self.image
        if kind == "text":
            return self.text
        return Effort(max(self.image.probes, self.text.probes), max(self.image.rerank, self.text.rerank))

    def to_json(self) -> dict[str, Any]:
        return {kind: None if e is None else {"probes": e.probes, "rerank": e.rerank}
                for kind, e in (("image", self.image), ("text", self.text))}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Efforts:
        """Raises ValueError for a header that does not describe efforts."""
        def one(value: Any) -> Effort | None:
            if value is None:
                return None
            if not isinstance(value, dict):
                raise ValueError(f"a search effort must be an object (got {value!r})")
            return Effort(int(value["probes"]), int(value.get("rerank", 0)))

        image = one(data.get("image"))
        if image is None:
            raise ValueError("the search efforts name no image effort")
        return cls(image, one(data.get("text")))
