"""The one place that defines the diagnostic classes, their order and their names."""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("AKIEC", "BCC", "BKL", "DF", "MEL", "NV", "VASC")

FULL_NAMES: dict[str, str] = {
    "AKIEC": "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
    "BCC": "Basal cell carcinoma",
    "BKL": "Benign keratosis-like lesion",
    "DF": "Dermatofibroma",
    "MEL": "Melanoma",
    "NV": "Melanocytic nevus",
    "VASC": "Vascular lesion",
}

DESCRIPTIONS: dict[str, str] = {
    "AKIEC": "Sun-induced scaly lesion; a precursor of, or early, squamous cell carcinoma.",
    "BCC": "The most common skin cancer; grows locally and rarely spreads.",
    "BKL": "Benign: seborrhoeic keratoses, solar lentigines and lichen-planus-like keratoses.",
    "DF": "Benign fibrous nodule, often on the legs.",
    "MEL": "Malignant tumour of melanocytes; the deadliest common skin cancer.",
    "NV": "Benign mole; by far the most common class in HAM10000.",
    "VASC": "Benign vascular lesion: angiomas, angiokeratomas, pyogenic granulomas.",
}

MALIGNANT: frozenset[str] = frozenset({"AKIEC", "BCC", "MEL"})

NUM_CLASSES = len(CLASSES)
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
