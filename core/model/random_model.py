"""Build a SigLIP checkpoint with RANDOM weights, offline, in the same folder format as
google/medsiglip-448 (config.json, model.safetensors, tokenizer and processor files).

For tests, benchmarks and the offline demo only: it loads through the same AutoModel/AutoProcessor
path as the real model, and carries a marker file so that every answer built on it says that the
model is random and the results are meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from core.model.files import RANDOM_WEIGHTS_MARKER

Shape = Literal["tiny", "base", "medsiglip", "medsiglip-grid", "wide"]

VOCABULARY = """a an the of with without and no photo image scan chest x-ray ct mri ultrasound brain lung liver
knee shoulder heart fracture nodule effusion pneumonia normal left right pleural mass"""
WORDS = ["<pad>", "<unk>", "</s>", *VOCABULARY.split()]


def build_random_siglip(out_dir: str | Path, shape: Shape = "tiny", seed: int = 0) -> Path:
    """Write a random SigLIP to `out_dir`. 'tiny': ~52k parameters, 32 px, 32-d; 'base': SigLIP-B/16's
    architecture (~200M parameters, 224 px, 768-d); 'medsiglip': MedSigLIP-448's architecture (878M
    parameters, 448 px, 1152-d); 'medsiglip-grid': MedSigLIP-448's input geometry (448 px, 14-px patches: a
    32 x 32 grid) at a tiny width and depth (~0.2M parameters), for tests of where relevance maps land; 'wide':
    256-d embeddings at 32 px and one layer, for the scale bench's synthetic archives."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel, SiglipProcessor

    try:  # transformers >= 5 without torchvision
        from transformers import SiglipImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers import SiglipImageProcessor as ImageProcessor  # type: ignore[assignment]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    medsiglip = shape == "medsiglip"
    max_len = 64 if medsiglip or shape in ("base", "medsiglip-grid") else 16
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="</s>", model_max_length=max_len)
    if medsiglip:
        width, mlp, layers, heads, image, patch = 1152, 4304, 27, 16, 448, 14
    elif shape == "medsiglip-grid":
        width, mlp, layers, heads, image, patch = 64, 128, 2, 2, 448, 14
    elif shape == "base":
        width, mlp, layers, heads, image, patch = 768, 3072, 12, 12, 224, 16
    elif shape == "wide":
        width, mlp, layers, heads, image, patch = 256, 512, 1, 4, 32, 16
    else:
        width, mlp, layers, heads, image, patch = 32, 64, 2, 2, 32, 8
    text = dict(vocab_size=len(WORDS), hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=max_len,
                pad_token_id=0, bos_token_id=None, eos_token_id=2)
    vision = dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image, patch_size=patch, num_channels=3)
    torch.manual_seed(seed)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval().save_pretrained(out)
    image_processor = ImageProcessor(size={"height": image, "width": image})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    (out / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({
        "random_weights": True, "shape": shape, "seed": seed,
        "note": "Random weights made by medsearch for tests and demos: results are meaningless.",
    }, indent=2) + "\n")
    return out
