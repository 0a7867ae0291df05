"""The image/text encoder: any transformers SigLIP or CLIP checkpoint, from the hub or a local folder.

Callers depend on the small `Encoder` protocol; `HFEncoder.load` builds the real one. Both towers
return L2-normalised float32 NumPy arrays, so inner product = cosine similarity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.errors import ModelLoadError
from core.imaging.preprocess import preprocessing_version
from core.model.device import CPU_BATCH, CudaPending, batch_size_for, choose_device
from core.model.files import (
    RANDOM_WEIGHTS_MARKER,
    ModelFingerprint,
    describe_model,
    explain_load_failure,
    fingerprint_of,
    hash_weights,
    hub_reachable,
)
from core.model.inputs import ModelInput, assemble

__all__ = ["RANDOM_WEIGHTS_MARKER", "Encoder", "HFEncoder", "ImagePreprocessor", "ModelFingerprint", "Pending",
           "PreprocessorSpec", "Ready", "describe_model", "hash_weights", "hub_reachable", "l2_normalise"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessorSpec:
    """Enough to rebuild a model's image preprocessor in another process (indexing workers)."""

    name_or_path: str
    revision: str | None = None
    local_files_only: bool = True


class ImagePreprocessor:
    """The workers' half of the model's image processor (core.model.inputs): RGB uint8 -> uint8 at the
    model's input size (grey kept as one channel)."""

    def __init__(self, processor: Any) -> None:
        self.input = ModelInput.from_processor(processor)

    @classmethod
    def load(cls, spec: PreprocessorSpec) -> ImagePreprocessor:
        from transformers import AutoProcessor

        try:
            return cls(AutoProcessor.from_pretrained(spec.name_or_path, revision=spec.revision,
                                                     local_files_only=spec.local_files_only))
        except Exception as exc:
            raise ModelLoadError(explain_load_failure(spec.name_or_path, exc)) from exc

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.input.resize(image) for image in images]


class Pending(Protocol):
    """Vectors being computed (on a GPU, asynchronously); `result()` waits for them."""

    def result(self) -> np.ndarray: ...


@dataclass
class Ready:
    vectors: np.ndarray

    def result(self) -> np.ndarray:
        return self.vectors


class Encoder(Protocol):
    """What the indexer and the API need from a model."""

    @property
    def fingerprint(self) -> ModelFingerprint: ...

    @property
    def dim(self) -> int: ...

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 RGB arrays -> (n, dim) float32, rows L2-normalised."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> (n, dim) float32, rows L2-normalised."""
        ...

    @property
    def preprocessor_spec(self) -> PreprocessorSpec: ...

    @property
    def decode_side(self) -> int:
        """The side images are decoded at, at least (core.model.inputs.ModelInput.decode_side)."""
        ...

    def preprocess(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """RGB uint8 images -> uint8 at the model's input size (what workers compute ahead of the model)."""
        ...

    def input_buffer(self, rows: int) -> np.ndarray:
        """A (rows, height, width, 3) uint8 array to assemble a batch in (pinned memory on CUDA)."""
        ...

    def start_encoding(self, batch: np.ndarray) -> Pending:
        """Begin encoding a uint8 batch (n, height, width, 3); the batch may be refilled once the result
        is taken. `result()` is (n, dim) float32, rows L2-normalised."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class HFEncoder:
    """A transformers SigLIP/CLIP model and its processor, loaded once, used for both towers."""

    def __init__(self, model: Any, processor: Any, fingerprint: ModelFingerprint, device: str,
                 text_max_length: int, spec: PreprocessorSpec, dtype: Any = None) -> None:
        self._model = model
        self._processor = processor
        self._preprocessor = ImagePreprocessor(processor)
        self._fingerprint = fingerprint
        self._device = device
        self._dtype = dtype
        self._spec = spec
        self.text_max_length = text_max_length

    @classmethod
    def load(cls, name_or_path: str, *, revision: str | None = None, device: str = "auto",
             local_files_only: bool = False, precision: str = "auto", quantize: str | None = None,
             rendering: str = "", compile_model: bool = False) -> HFEncoder:
        """Load through AutoModel/AutoProcessor. Raises ModelLoadError with an actionable message.

        precision: auto (bf16 on a GPU that supports it, fp16 on other GPUs, fp32 on CPU), fp32, bf16,
        fp16. quantize: "int8" for dynamic int8 quantization of the linear layers (CPU only).
        rendering: the model rendering images are made with ("" or "ct-channels"), in the fingerprint.
        compile_model: torch.compile the image tower (worth it for long runs on a GPU; the first batch
        waits for the compilation). Attention runs through torch's SDPA where the model supports it.
        """
        encoder = cls._load(name_or_path, revision=revision, device=device, local_files_only=local_files_only)
        encoder._set_precision(precision, quantize)
        if compile_model:
            encoder._compile()
        return encoder.for_rendering(rendering)

    def for_rendering(self, rendering: str) -> HFEncoder:
        """This model (shared, not copied) with the fingerprint of images made with `rendering`."""
        import copy

        version = preprocessing_version(rendering)
        if version == self._fingerprint.preprocessing_version:
            return self
        other = copy.copy(self)
        other._fingerprint = replace(self._fingerprint, preprocessing_version=version)
        return other

    def _compile(self) -> None:
        import torch

        tower = getattr(self._model, "vision_model", None)
        if tower is None:
            raise ModelLoadError(f"--compile: {type(self._model).__name__} has no vision_model to compile")
        self._model.vision_model = torch.compile(tower)
        logger.info("image tower compiled with torch.compile (the first batch waits for it)")

    def suggest_batch_size(self) -> int:
        """Images a forward pass: from the free memory on a GPU (the activations of a measured batch of
        8), CPU_BATCH elsewhere."""
        if self._device != "cuda":
            return CPU_BATCH
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        self.start_encoding(np.zeros((8, *self.input_buffer(1).shape[1:]), dtype=np.uint8)).result()
        per_image = max(1.0, (torch.cuda.max_memory_allocated() - before) / 8)
        free, _ = torch.cuda.mem_get_info()
        size = batch_size_for(free, per_image)
        logger.info("batch size %d (%.0f MB of activations an image, %.0f GB free)", size, per_image / 1e6, free / 1e9)
        return size

    @property
    def attention(self) -> str:
        """The attention implementation the model runs (sdpa where supported)."""
        return str(getattr(self._model.config, "_attn_implementation", "unknown"))

    def _set_precision(self, precision: str, quantize: str | None) -> None:
        import torch

        if quantize:
            if quantize != "int8":
                raise ModelLoadError(f"--quantize {quantize}: only int8 is supported")
            if self._device != "cpu":
                raise ModelLoadError("--quantize int8 runs on the CPU only (use --precision on a GPU)")
            self._model = torch.ao.quantization.quantize_dynamic(self._model, {torch.nn.Linear}, dtype=torch.qint8)
            logger.info("model quantized to dynamic int8")
            return
        if precision == "auto":  # half precision on GPUs, fp32 on CPUs (where bf16 is slower)
            gpu = "bf16" if self._device == "cuda" and torch.cuda.is_bf16_supported() else "fp16"
            precision = gpu if self._device == "cuda" else "fp32"
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        if precision not in dtypes:
            raise ModelLoadError(f"--precision {precision}: expected auto, fp32, bf16 or fp16")
        if precision != "fp32":
            self._model = self._model.to(dtypes[precision])
            self._dtype = dtypes[precision]
            logger.info("model runs in %s", precision)

    @classmethod
    def _load(cls, name_or_path: str, *, revision: str | None, device: str, local_files_only: bool) -> HFEncoder:
        """Load through AutoModel/AutoProcessor. Raises ModelLoadError with an actionable message."""
        try:
            import torch
            from transformers import AutoModel, AutoProcessor
        except ImportError as exc:  # pragma: no cover - an install problem
            raise ModelLoadError(f"torch/transformers are not installed: {exc}") from exc

        resolved_device = choose_device(device)
        logger.info("loading model %s (device %s)", name_or_path, resolved_device)
        def from_pretrained(cache_only: bool) -> tuple[Any, Any]:
            return (
                AutoModel.from_pretrained(name_or_path, revision=revision, local_files_only=cache_only),
                AutoProcessor.from_pretrained(name_or_path, revision=revision, local_files_only=cache_only),
            )

        try:
            try:  # a folder, or a hub checkpoint already in the local cache: no network needed
                model, processor = from_pretrained(cache_only=True)
            except OSError:
                if local_files_only or Path(name_or_path).exists():
                    raise
                if not hub_reachable():
                    raise OSError("network unreachable: could not connect to the hub") from None
                model, processor = from_pretrained(cache_only=False)
        except Exception as exc:
            raise ModelLoadError(explain_load_failure(name_or_path, exc)) from exc
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ModelLoadError(f"{name_or_path} is a {type(model).__name__}, not a dual image/text encoder "
                                 "(SigLIP or CLIP family)")
        model = model.eval().to(resolved_device)
        torch.set_grad_enabled(False)

        config = model.config
        text_max_length = int(config.text_config.max_position_embeddings)
        fingerprint = fingerprint_of(name_or_path, revision, local_files_only, config)
        if fingerprint.random_weights:
            logger.warning("model %s has RANDOM weights: search results are meaningless", name_or_path)
        spec = PreprocessorSpec(name_or_path, revision if Path(name_or_path).is_dir() else fingerprint.revision,
                                local_files_only=True)
        return cls(model, processor, fingerprint, resolved_device, text_max_length, spec)

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self._fingerprint

    @property
    def dim(self) -> int:
        return self._fingerprint.dim

    @property
    def device(self) -> str:
        return self._device

    @property
    def logit_scale(self) -> float | None:
        value = getattr(self._model, "logit_scale", None)
        return float(value.exp().item()) if value is not None else None

    @property
    def logit_bias(self) -> float | None:
        value = getattr(self._model, "logit_bias", None)
        return float(value.item()) if value is not None else None

    def _features(self, output: Any) -> np.ndarray:
        tensor = output if hasattr(output, "detach") else output.pooler_output
        array = tensor.detach().float().cpu().numpy()
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ModelLoadError(f"model returned embeddings of shape {array.shape}, expected (n, {self.dim})")
        return l2_normalise(array)

    @property
    def preprocessor_spec(self) -> PreprocessorSpec:
        return self._spec

    @property
    def decode_side(self) -> int:
        return self._preprocessor.input.decode_side

    def preprocess(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._preprocessor(images)

    @property
    def model_input(self) -> ModelInput:
        return self._preprocessor.input

    def explain_parts(self) -> tuple[Any, ModelInput, str, Any]:
        """The model, its input, device and dtype, for relevance maps (core.maps.explain.Explainer.of)."""
        return self._model, self._preprocessor.input, self._device, self._dtype

    def input_buffer(self, rows: int) -> np.ndarray:
        shape = (rows, self._preprocessor.input.height, self._preprocessor.input.width, 3)
        if self._device == "cuda":  # pinned: the copy to the GPU runs without the CPU waiting for it
            import torch

            return torch.empty(shape, dtype=torch.uint8, pin_memory=True).numpy()
        return np.empty(shape, dtype=np.uint8)

    def start_encoding(self, batch: np.ndarray) -> Pending:
        import torch

        if len(batch) == 0:
            return Ready(np.zeros((0, self.dim), dtype=np.float32))
        with torch.inference_mode():
            values = self._preprocessor.input.normalise(
                torch.from_numpy(batch).to(self._device, non_blocking=True))  # rescale, mean/std on the device
            if self._dtype is not None:
                values = values.to(self._dtype)
            output = self._model.get_image_features(pixel_values=values)
            if self._device != "cuda":
                return Ready(self._features(output))
            return CudaPending(output if hasattr(output, "detach") else output.pooler_output, self.dim)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        resized = self.preprocess(images)
        return self.start_encoding(assemble(resized, self.input_buffer(len(resized)))).result()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # SigLIP was trained on text padded to a fixed length (64 tokens for MedSigLIP): pad to it.
        inputs = self._processor(text=list(texts), padding="max_length", truncation=True,
                                 max_length=self.text_max_length, return_tensors="pt")
        import torch

        kwargs = {"input_ids": inputs["input_ids"].to(self._device)}
        if "attention_mask" in inputs:
            kwargs["attention_mask"] = inputs["attention_mask"].to(self._device)
        with torch.inference_mode():
            return self._features(self._model.get_text_features(**kwargs))

