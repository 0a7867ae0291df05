"""A case summary built from evidence, never invented: the image's findings (a probe's calibrated
probabilities, or zero-shot probabilities of candidate labels), the nearest indexed cases of other
patients (one image per patient) with their labels, and the vote of those labels. Every statement
carries the evidence it restates (probabilities, case ids); none is a diagnosis, and the summary says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from search_api.services.classifying import Classification, classify
from search_api.services.search import SearchService
from storage.records import StoredImage
from storage.sql.probes import Probe

DISCLAIMER = ("This summary restates measurements: model probabilities and the labels of similar indexed cases. "
              "It is not a diagnosis or a treatment recommendation; a clinician judges the images themselves.")
REPORTED = 0.5  # findings at least this probable are stated one by one


@dataclass(frozen=True)
class Evidence:
    image_ids: list[int] = field(default_factory=list)
    probabilities: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Statement:
    text: str
    evidence: Evidence


@dataclass(frozen=True)
class Neighbour:
    image: StoredImage
    score: float


@dataclass(frozen=True)
class Vote:
    label: str
    count: int
    agreement: float  # share of the neighbours carrying the label
    image_ids: list[int]


@dataclass(frozen=True)
class Summary:
    image_id: int
    method: str  # "probe NAME", "zero-shot (preset P)", "zero-shot (labels of the nearest cases)", "none"
    findings: Classification | None
    neighbours: list[Neighbour]
    votes: list[Vote]
    statements: list[Statement]
    disclaimer: str = DISCLAIMER


def nearest_other_patients(service: SearchService, image: StoredImage, k: int) -> list[Neighbour]:
    """The k nearest indexed images of other patients, the best one of each patient (an image without a
    patient id stands for itself; images of the same study are left out as well)."""
    vector = service.image_vector(image.id)
    own_patient, own_study = image.metadata.patient_id, image.metadata.study_uid
    found: list[Neighbour] = []
    seen: set[str] = set()
    fetch = 4 * k + 8
    while True:
        pairs = service.store.search(vector[None, :], fetch)[0]
        found, seen = [], set()
        records = service.repository.get_images([i for i, _ in pairs])
        for image_id, score in pairs:
            other = records.get(image_id)
            if other is None or not other.sources or image_id == image.id:
                continue
            meta = other.metadata
            if (own_patient is not None and meta.patient_id == own_patient) or (
                    own_study is not None and meta.study_uid == own_study):
                continue
            key = meta.patient_id or f"image:{image_id}"
            if key not in seen:
                seen.add(key)
                found.append(Neighbour(other, score))
        if len(found) >= k or len(pairs) < fetch:
            return found[:k]
        fetch *= 4


def label_votes(neighbours: list[Neighbour]) -> list[Vote]:
    counts: Counter[str] = Counter()
    holders: dict[str, list[int]] = {}
    for neighbour in neighbours:
        for label in sorted(set(neighbour.image.metadata.labels)):
            counts[label] += 1
            holders.setdefault(label, []).append(neighbour.image.id)
    return [Vote(label, n, n / len(neighbours), holders[label]) for label, n in counts.most_common()]


def summarise(service: SearchService, image: StoredImage, k: int = 10, probe: Probe | None = None,
              prompts: dict[str, str] | None = None, preset: str | None = None, show_labels: bool = True) -> Summary:
    """The summary of an indexed image. Candidate labels: the probe's, else `prompts` (a preset or
    labels asked for), else the labels the nearest cases carry. Without `show_labels` (a role that may
    not see labels) the cases' labels neither vote nor are named."""
    neighbours = nearest_other_patients(service, image, k)
    if not show_labels:
        neighbours = [Neighbour(replace(n.image, metadata=replace(n.image.metadata, labels=[])), n.score)
                      for n in neighbours]
    votes = label_votes(neighbours) if neighbours else []
    if probe is not None:
        method = f"probe {probe.name}"
    elif prompts:
        method = f"zero-shot (preset {preset})" if preset else "zero-shot (the labels asked for)"
    elif votes:
        prompts = {vote.label: vote.label for vote in votes}
        method = "zero-shot (labels of the nearest cases)"
    else:
        method = "none"
    findings = classify(service, image.id, prompts, neighbours=0, probe=probe) if method != "none" else None
    return Summary(image.id, method, findings, neighbours, votes, statements(findings, method, neighbours, votes))


def statements(findings: Classification | None, method: str, neighbours: list[Neighbour], votes: list[Vote]
               ) -> list[Statement]:
    said: list[Statement] = []
    if findings is None:
        said.append(Statement("No candidate labels: no probe or preset was asked for and the nearest cases carry "
                              "no labels, so no finding is stated.", Evidence([n.image.id for n in neighbours])))
    else:
        probable = [s for s in findings.labels if s.probability >= REPORTED]
        for score in probable:
            said.append(Statement(f"{method.capitalize()}: '{score.label}' has probability {score.probability:.2f}.",
                                  Evidence(probabilities={score.label: score.probability})))
        if not probable:
            top = findings.labels[0]
            said.append(Statement(f"{method.capitalize()}: no label reaches {REPORTED}; the most probable is "
                                  f"'{top.label}' at {top.probability:.2f}.",
                                  Evidence(probabilities={top.label: top.probability})))
        if findings.requires_human_review:
            said.append(Statement("A person should review these probabilities: " + "; ".join(findings.review_reasons)
                                  + ".", Evidence(probabilities={s.label: s.probability for s in findings.labels})))
    if not neighbours:
        said.append(Statement("No indexed case of another patient was found to compare with.", Evidence()))
        return said
    nearest = neighbours[0]
    labels = ", ".join(f"'{label}'" for label in nearest.image.metadata.labels) or "no label"
    said.append(Statement(f"The nearest case of another patient (image {nearest.image.id}, cosine similarity "
                          f"{nearest.score:.2f}) carries {labels}.", Evidence([nearest.image.id])))
    for vote in votes[:5]:
        said.append(Statement(f"{vote.count} of the {len(neighbours)} nearest cases of other patients "
                              f"{'is' if vote.count == 1 else 'are'} labelled "
                              f"'{vote.label}' (agreement {vote.agreement:.2f}).", Evidence(vote.image_ids)))
    if not votes:
        said.append(Statement(f"None of the {len(neighbours)} nearest cases of other patients carries a label.",
                              Evidence([n.image.id for n in neighbours])))
    if findings is not None and votes:
        top, leader = findings.labels[0], votes[0]
        agree = top.label == leader.label
        said.append(Statement(
            f"The most probable finding ('{top.label}', {top.probability:.2f}) {'is' if agree else 'is not'} the label "
            f"most of the nearest cases carry ('{leader.label}', {leader.count} of {len(neighbours)}).",
            Evidence(leader.image_ids, {top.label: top.probability})))
    return said
