"""The encoder on a tiny random SigLIP loaded through AutoModel/AutoProcessor, exactly as the real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelLoadError
from core.model.encoder import HFEncoder


def test_outputs_are_normalised_float32(encoder: HFEncoder):
    images = [np.random.default_rng(i).integers(0, 255, (40 + i, 30, 3), dtype=np.uint8) for i in range(3)]
    vectors = encoder.encode_images(images)
    assert vectors.shape == (3, encoder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    texts = encoder.encode_texts(["right pleural effusion", "normal chest x-ray"])
    assert texts.shape == (2, encoder.dim) and np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_vectors(encoder: HFEncoder):
    images = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(4)]
    together = encoder.encode_images(images)
    alone = np.vstack([encoder.encode_images([image]) for image in images])
    assert np.allclose(together, alone, atol=1e-5)
    batch = encoder.encode_texts(["a", "chest ct with nodule"])
    single = encoder.encode_texts(["chest ct with nodule"])
    assert np.allclose(batch[1], single[0], atol=1e-5)


def test_text_padded_to_trained_length(encoder: HFEncoder, tiny_model_dir: Path):
    assert encoder.text_max_length == 16  # the tiny model's max_position_embeddings
    tokens = encoder._processor(text=["chest"], padding="max_length", truncation=True,
                                max_length=encoder.text_max_length, return_tensors="pt")["input_ids"]
    assert tokens.shape == (1, 16)
    long_query = " ".join(["chest"] * 100)  # longer than the model accepts: truncated, not an error
    assert encoder.encode_texts([long_query]).shape == (1, encoder.dim)


def test_fingerprint(encoder: HFEncoder, tiny_model_dir: Path):
    fp = encoder.fingerprint
    assert fp.dim == 32 and fp.random_weights
    assert fp.weights_sha256 and len(fp.weights_sha256) == 64
    again = HFEncoder.load(str(tiny_model_dir), device="cpu").fingerprint
    assert again.key == fp.key


def test_missing_model_is_an_actionable_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="could not load"):
        HFEncoder.load(str(tmp_path / "nowhere"), local_files_only=True)
    with pytest.raises(ModelLoadError, match="--model"):
        HFEncoder.load("google/medsiglip-448", local_files_only=True)


def test_int8_quantization_stays_close_to_fp32(encoder: HFEncoder, tiny_model_dir: Path):
    images = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(6)]
    quantized = HFEncoder.load(str(tiny_model_dir), device="cpu", quantize="int8")
    cosines = np.sum(quantized.encode_images(images) * encoder.encode_images(images), axis=1)
    assert cosines.min() >= 0.99
    assert quantized.fingerprint.key == encoder.fingerprint.key


def test_bf16_precision_runs_and_stays_close(encoder: HFEncoder, tiny_model_dir: Path):
    images = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(4)]
    half = HFEncoder.load(str(tiny_model_dir), device="cpu", precision="bf16")
    vectors = half.encode_images(images)
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.sum(vectors * encoder.encode_images(images), axis=1).min() >= 0.98
    with pytest.raises(ModelLoadError, match="only int8"):
        HFEncoder.load(str(tiny_model_dir), device="cpu", quantize="int4")
