"""Build the tokenizer, the (quantized) base model and the LoRA config: one place each."""

import json
from pathlib import Path
from typing import Any

from pricer import PACKAGE_DIR


def build_bnb_config(quant: dict[str, Any]):
    """`quant` holds BitsAndBytesConfig's own fields; empty means no quantization."""
    if not quant:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**quant)


def build_lora_config(lora: dict[str, Any]):
    from peft import LoraConfig

    return LoraConfig(**lora)


def unwrap_peft(model):
    """The transformers model inside a peft wrapper, or the model itself.

    peft injects its LoRA layers into the base model's own modules, so hooks, compiled
    layers and direct calls on the unwrapped model keep the adapter active.
    """
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def ensure_tiny_model(path: str) -> None:
    """model=tiny: build the random-init model from the bundled sample texts on first use."""
    from pricer.tiny import build_tiny_model

    with open(PACKAGE_DIR / "sample_data" / "train.jsonl") as f:
        texts = [json.loads(line)["text"] for line in f]
    build_tiny_model(Path(path), texts)


def load_tokenizer(name_or_path: str, revision: str | None, trust_remote_code: bool):
    """Pad with EOS on the right, as the notebook did; Llama 3 ships no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(
    name_or_path: str,
    revision: str | None,
    trust_remote_code: bool,
    attn_implementation: str,
    quant: dict[str, Any],
    compute_dtype: str,
    accelerator: str,
    pad_token_id: int,
):
    """The base model, quantized per `quant`, placed whole on this process's device."""
    import torch
    from transformers import AutoModelForCausalLM

    device_map = {"": torch.cuda.current_device()} if accelerator == "cuda" else None
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        revision=revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        quantization_config=build_bnb_config(quant),
        dtype=getattr(torch, compute_dtype),
        device_map=device_map,
    )
    model.config.pad_token_id = pad_token_id
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    return model
