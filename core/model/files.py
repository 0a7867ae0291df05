"""What a checkpoint is, without loading its weights: the fingerprint of the vectors it makes (its
weights' hash or hub commit, dimension, preprocessing version), whether the hub can be reached, and
load failures explained in words a person can act on."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import ModelLoadError
from core.imaging.preprocess import preprocessing_version

# A checkpoint folder that carries this file declares its weights random (made for tests or demos);
# everything it produces is labelled meaningless. core.model.random_model writes it.
RANDOM_WEIGHTS_MARKER = "medsearch_random_weights.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class ModelFingerprint:
    """Identifies what produced a vector. Vectors with different `key`s must never share an index."""

    name: str
    revision: str | None
    weights_sha256: str | None
    dim: int
    preprocessing_version: str
    random_weights: bool

    @property
    def key(self) -> str:
        identity = {
            "weights": self.weights_sha256 or f"{self.name}@{self.revision}",
            "dim": self.dim,
            "preprocessing": self.preprocessing_version,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}


def hash_weights(folder: Path) -> str | None:
    """sha256 over the weight files of a local checkpoint folder (names and contents, sorted)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while chunk := handle.read(8 * 1024 * 1024):
                digest.update(chunk)
    return digest.hexdigest()


def _hub_commit(name: str, revision: str | None, local_files_only: bool) -> str | None:
    """The commit a hub checkpoint resolved to, read from its cache path (.../snapshots/<commit>/)."""
    try:
        from transformers.utils import cached_file

        path = cached_file(name, "config.json", revision=revision, local_files_only=True)
    except Exception:
        return revision
    match = re.search(r"snapshots/([0-9a-f]{40})/", str(path)) if path else None
    return match.group(1) if match else revision


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub (HF_ENDPOINT, default huggingface.co) accepts a TCP connection."""
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def explain_load_failure(name: str, exc: Exception) -> str:
    text = str(exc)
    if Path(name).exists():
        return f"could not load the model from the folder {name}: {text}"
    hints = []
    lowered = text.lower()
    if any(word in lowered for word in ("connect", "offline", "resolve", "network", "max retries", "timed out")):
        hints.append("the Hugging Face hub could not be reached (no network?): pass a local checkpoint "
                     "folder with --model / MEDSEARCH_MODEL, or pre-download it on a connected machine")
    if any(word in lowered for word in ("gated", "401", "403", "access", "token")):
        hints.append(f"{name} is gated: accept its terms on the hub and log in (`hf auth login`) or set "
                     "HF_TOKEN")
    hint = "; ".join(hints) or "check the model id or folder"
    return f"could not load model {name!r}: {hint}. ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"


def fingerprint_of(name_or_path: str, revision: str | None, local_files_only: bool, config: Any,
                 rendering: str = "") -> ModelFingerprint:
    dim = getattr(config, "projection_dim", None) or config.vision_config.hidden_size
    folder = Path(name_or_path)
    if folder.is_dir():
        weights, commit = hash_weights(folder), revision
        random_weights = (folder / RANDOM_WEIGHTS_MARKER).exists()
    else:
        weights, commit, random_weights = None, _hub_commit(name_or_path, revision, local_files_only), False
    return ModelFingerprint(name=name_or_path, revision=commit, weights_sha256=weights, dim=int(dim),
                            preprocessing_version=preprocessing_version(rendering), random_weights=random_weights)


def describe_model(name_or_path: str, revision: str | None = None, local_files_only: bool = False,
                   rendering: str = "") -> ModelFingerprint:
    """The fingerprint HFEncoder.load would give the model, from its configuration and weight files alone
    (no weights loaded): what a driver that lets other processes run the model needs. `rendering`: a
    model rendering images are made with (core.imaging.preprocess.MODEL_RENDERINGS), part of the fingerprint.
    Raises ModelLoadError."""
    from transformers import AutoConfig

    try:
        try:
            config = AutoConfig.from_pretrained(name_or_path, revision=revision, local_files_only=True)
        except OSError:
            if local_files_only or Path(name_or_path).exists() or not hub_reachable():
                raise
            config = AutoConfig.from_pretrained(name_or_path, revision=revision)
        return fingerprint_of(name_or_path, revision, local_files_only, config, rendering)
    except Exception as exc:
        raise ModelLoadError(explain_load_failure(name_or_path, exc)) from exc
