"""Compiled layers at prediction time: the model hardware.compile=true trains is the one evaluated."""

from pathlib import Path

import pytest
import torch
from conftest import BATCH_TOKENS, TOP_K
from test_speedups import tiny_trainer
from torch._dynamo.utils import counters

from pricer import speedups
from pricer.data import split_prompt_completion
from pricer.predict import generate_prices, predict_prices


def predictions(model, tokenizer, prompts: list[str]) -> tuple[list[float], list[float], list[list[int]]]:
    """Both of pricer's paths (one forward pass; greedy generation with a KV cache, left padded) and
    the greedy tokens of one batched, left-padded generate."""
    fast = predict_prices(model, tokenizer, prompts, TOP_K, batch_tokens=200)
    sequences = tokenizer(prompts)["input_ids"]
    generated = generate_prices(model, tokenizer, sequences, BATCH_TOKENS)
    batch = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    model.eval()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id)
    model.train()
    return fast, generated, out[:, batch["input_ids"].shape[1] :].tolist()


@pytest.mark.slow  # torch.compile of the tiny model: ~40 s
def test_compiled_layers_predict_as_eager_ones(tiny_model_dir: Path, tmp_path: Path, sample_texts: list[str]) -> None:
    """train.py compiles each decoder layer (dynamic shapes) and, after training, scores the same model
    object in eval mode: the fast path calls the decoder directly, generation runs the layers with a KV
    cache and a left-padding mask, graphs dynamo must build anew (eval mode, no grad, a cache per layer).
    Those compiled layers must give the eager predictions and the same greedy tokens. Dynamo specialises
    on each layer's cache (and layer_idx), so generation soon reaches its recompile limit (8): later
    frames run eager, which is still correct. aot_eager here; inductor's codegen is checked on the GPU."""
    torch._dynamo.reset()  # every model's layers share one code object and its 8 cache entries: start as a run does
    trainer = tiny_trainer(tiny_model_dir, tmp_path, sample_texts, gradient_checkpointing=False)
    speedups.causal_mask_only(trainer.model, "cpu")  # as train.py does before compiling
    model, tokenizer = trainer.model, trainer.processing_class
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero; a trained adapter changes the outputs
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    prompts = [split_prompt_completion(text)["prompt"] for text in sample_texts[:4]]
    assert len({len(ids) for ids in tokenizer(prompts)["input_ids"]}) > 1, "prompts of several lengths: padding"

    eager = predictions(model, tokenizer, prompts)
    assert speedups.compile_layers(model, backend="aot_eager") == 4
    graphs = counters["stats"]["unique_graphs"]
    compiled = predictions(model, tokenizer, prompts)
    assert counters["stats"]["unique_graphs"] - graphs >= 3, "compiled: the fast path, prefill and decoding"

    fast, generated, tokens = compiled
    assert tokens == eager[2]
    assert generated == eager[1]
    assert fast == pytest.approx(eager[0], rel=1e-6)
    assert len(set(eager[0])) > 1 and any(price > 0 for price in eager[1]), "the predictions really differ"
