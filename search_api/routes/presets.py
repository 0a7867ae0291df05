"""Label presets for zero-shot classification: label -> the prompt the text tower reads."""

from __future__ import annotations

PRESETS: dict[str, dict[str, str]] = {
    # the findings of the CheXpert/MIMIC-CXR label set that MedSigLIP's authors report
    "chest-xray": {label: f"a chest x-ray showing {label}" for label in (
        "atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion", "pneumonia", "pneumothorax",
        "lung opacity", "lung lesion", "fracture", "support devices", "enlarged cardiomediastinum")}
    | {"no finding": "a normal chest x-ray with no finding"},
    "dermatology": {label: f"a dermatoscopic image of {label}" for label in (
        "melanoma", "melanocytic nevus", "basal cell carcinoma", "actinic keratosis", "benign keratosis",
        "dermatofibroma", "vascular lesion", "squamous cell carcinoma")},
}


def prompts_for(labels: list[str], preset: str | None, where: str = "body") -> dict[str, str]:
    """label -> prompt for a request's preset or labels (at most 100, each cut at 200 characters)."""
    from search_api.errors import FieldError

    if preset:
        if preset not in PRESETS:
            raise FieldError(422, (where, "preset"), f"unknown preset; one of {', '.join(PRESETS)}", "unknown_preset")
        return PRESETS[preset]
    names = [label.strip()[:200] for label in labels if label.strip()]
    if not names or len(names) > 100:
        raise FieldError(422, (where, "labels"), "give 1 to 100 labels, or a preset", "missing_labels")
    return {name: name for name in dict.fromkeys(names)}
