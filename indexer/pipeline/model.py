"""Which model a run uses, as a value every engine can carry where the model runs (a worker, an actor on
another machine): the spec loads it there, and tells its fingerprint without loading its weights."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from core.model.encoder import HFEncoder, ModelFingerprint, PreprocessorSpec, describe_model


def resolve_model(name: str) -> str:
    """A local folder as its absolute path (what the index records), a hub id as it is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


@dataclass(frozen=True)
class ModelSpec:
    name: str
    revision: str | None = None
    device: str = "auto"
    precision: str = "auto"
    quantize: str | None = None
    local_files_only: bool = False
    rendering: str = ""  # a model rendering (core.imaging.preprocess.MODEL_RENDERINGS): part of the fingerprint
    compile_model: bool = False

    def load(self, device: str | None = None) -> HFEncoder:
        """The model itself (weights loaded), on `device` (default: the spec's). Raises ModelLoadError."""
        return HFEncoder.load(self.name, revision=self.revision, device=device or self.device,
                              local_files_only=self.local_files_only, precision=self.precision,
                              quantize=self.quantize if (device or self.device) == "cpu" else None,
                              rendering=self.rendering, compile_model=self.compile_model)

    def fingerprint(self) -> ModelFingerprint:
        """What the loaded model's fingerprint will be, read from its configuration and weight files."""
        return describe_model(self.name, self.revision, self.local_files_only, self.rendering)

    def preprocessor(self) -> PreprocessorSpec:
        return PreprocessorSpec(self.name, self.revision)

    def on(self, device: str) -> ModelSpec:
        return replace(self, device=device)
