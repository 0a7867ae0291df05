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
