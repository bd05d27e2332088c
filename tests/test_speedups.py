"""The faster step (pricer.speedups): the same loss as TRL's, the loss on the price only, fused AdamW's step.

batch=auto's probe and its line fit: test_batch_size.py."""

from pathlib import Path

import torch

from pricer import batch_size, modeling, speedups
from pricer.frozen4bit import lean_4bit_linears
from pricer.sft import build_sft_config, build_trainer

NF4_CPU = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
               bnb_4bit_compute_dtype="float32")
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            bias="none", task_type="CAUSAL_LM")


def tiny_trainer(model_dir: Path, tmp_path: Path, texts: list[str], gradient_checkpointing: bool, use_cpu: bool = True,
                 **changes):
    """A tiny nf4 model with LoRA in TRL's SFTTrainer (on the CPU, or the GPU); LoRA dropout off so two builds
    compute the same. `changes` replace SFTConfig fields."""
    from datasets import Dataset

    from pricer.data import split_prompt_completion

    tokenizer = modeling.load_tokenizer(str(model_dir), None, False)
    model = modeling.load_model(str(model_dir), None, False, "sdpa", NF4_CPU, "float32", "cpu" if use_cpu else "cuda",
                               tokenizer.pad_token_id)
    sft = dict(per_device_train_batch_size=8, max_length=182, optim="adamw_torch", learning_rate=1e-4,
               gradient_checkpointing=gradient_checkpointing, max_steps=1, bf16=False, fp16=False, save_strategy="no") | changes
    args = build_sft_config(sft, output_dir=str(tmp_path), run_name="speed", report_to=[], seed=0, use_cpu=use_cpu)
    data = Dataset.from_list([split_prompt_completion(text) for text in texts[:64]])
    torch.manual_seed(0)  # the same LoRA init in every build
    return build_trainer(model, tokenizer, args, modeling.build_lora_config(LORA), data, [], "float32")


def loss_and_grads(trainer, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = batch_size.training_step(trainer, dict(batch))
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    return loss, grads


def test_the_loss_covers_the_price_and_nothing_else(tiny_model_dir: Path, tmp_path: Path, sample_texts) -> None:
    """What the notebook's collator did, from the trainer pricer builds: in a real collated batch the
    positions that carry loss are exactly each row's completion (the price and the end-of-text token),
    the last real tokens of the row; prompt and padding carry none."""
    from pricer.data import split_prompt_completion

    trainer = tiny_trainer(tiny_model_dir, tmp_path, sample_texts, gradient_checkpointing=False)
    rows = [trainer.train_dataset[i] for i in range(8)]
    assert [row["prompt"] for row in rows] == [split_prompt_completion(text)["prompt"] for text in sample_texts[:8]]
    batch = trainer.data_collator(rows)
    tokenizer = trainer.processing_class
    assert not batch["attention_mask"].all(), "rows of several lengths: padding is in the batch"
    for i in range(len(rows)):
        scored = batch["labels"][i].ne(-100)
        price = split_prompt_completion(sample_texts[i])["completion"]  # the row's source text, its price
        assert tokenizer.decode(batch["input_ids"][i][scored]) == price + tokenizer.eos_token
        real = int(batch["attention_mask"][i].sum())
        assert scored.nonzero().flatten().tolist() == list(range(real - int(scored.sum()), real)), "a suffix of the row"
        assert torch.equal(batch["labels"][i][scored], batch["input_ids"][i][scored])


def test_faster_step_has_trls_loss_and_gradients(tiny_model_dir: Path, tmp_path: Path, sample_texts) -> None:
    """TRL's defaults (checkpointing on, eager, padding mask) against pricer's fast step (checkpointing
    off, causal mask only, 4-bit linears in two ops, compiled layers, Liger where CUDA is, rows padded to
    a multiple of 8) on the same rows: the same loss and LoRA gradients."""
    plain = tiny_trainer(tiny_model_dir, tmp_path / "plain", sample_texts, gradient_checkpointing=True)
    # the Trainer does this when train() starts; transformers 5.24 renamed the method (5.17 has only the old name)
    getattr(plain.model, "activation_checkpointing_enable", plain.model.gradient_checkpointing_enable)()
    speedups.apply_liger("cpu")  # a no-op here, by design
    fast = tiny_trainer(tiny_model_dir, tmp_path / "fast", sample_texts, gradient_checkpointing=False)
    speedups.causal_mask_only(fast.model, "cpu")
    assert lean_4bit_linears(fast.model) == 4 * 7, "every linear of the 4 decoder layers"
    assert speedups.compile_layers(fast.model, backend="aot_eager") == 4  # inductor's codegen is checked on the GPU
    batch = plain.data_collator([plain.train_dataset[i] for i in range(8)])
    assert batch["labels"].ne(-100).sum() < batch["attention_mask"].sum() / 4, "completion-only: the price tokens"
    assert not batch["attention_mask"].all(), "rows of several lengths: there is padding for the mask to hide"

    fast.data_collator.pad_to_multiple_of = 8  # as conf/train.yaml sets it
    fast_batch = fast.data_collator([fast.train_dataset[i] for i in range(8)])
    assert fast_batch["input_ids"].shape[1] % 8 == 0 and fast_batch["input_ids"].shape[1] > batch["input_ids"].shape[1]

    plain_loss, plain_grads = loss_and_grads(plain, batch)
    fast_loss, fast_grads = loss_and_grads(fast, fast_batch)
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == fast_grads.keys() and any("lora_B" in name for name in plain_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_adamw_takes_the_notebooks_optimisation_step(tiny_model_dir: Path, tmp_path: Path, sample_texts) -> None:
    """The card-filling presets' optimizer=adamw_torch_fused against the notebook's paged_adamw_32bit, each
    built by the Trainer from its `optim`: three steps on the same batches move the LoRA weights alike.
    Paging only moves bitsandbytes' fp32 states (on the CPU it falls back to unpaged). A large learning rate
    and weight decay make any difference in the update rule show."""
    moved = {}
    for optim in ("paged_adamw_32bit", "adamw_torch_fused"):
        trainer = tiny_trainer(tiny_model_dir, tmp_path / optim, sample_texts, gradient_checkpointing=False,
                               optim=optim, learning_rate=1e-2, weight_decay=0.1)
        trainer.create_optimizer()
        start = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
        for step in range(3):
            batch_size.training_step(trainer, trainer.data_collator([trainer.train_dataset[i] for i in range(8 * step, 8 * step + 8)]))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        moved[optim] = {name: p.detach() - start[name] for name, p in trainer.model.named_parameters() if name in start}
        assert type(trainer.optimizer).__module__.split(".")[0] == ("bitsandbytes" if optim.startswith("paged") else "torch")
    paged, fused = moved["paged_adamw_32bit"], moved["adamw_torch_fused"]
    assert paged.keys() == fused.keys() and all(d.abs().max() > 1e-3 for d in paged.values()), "every LoRA weight moved"
    for name, delta in paged.items():
        # Compared as whole tensors: where a gradient is as small as Adam's eps, m / (sqrt(v) + eps) differs
        # between the two implementations by up to half that element's move (seen on an AVX512 host), while
        # the whole update agrees to ~2e-5. Weight decay alone moves every element ~1e-3 of its step, so a
        # wrong decay or betas would show far above 1e-4.
        relative = ((fused[name] - delta).norm() / delta.norm()).item()
        assert relative < 1e-4, (name, relative)


def test_causal_mask_only_keeps_the_mask_outside_training(tiny_model_dir: Path, tmp_path: Path, sample_texts,
                                                          cpu_kind: str) -> None:
    """Generation pads on the left, where the padding mask matters: in eval mode it is kept, so a
    left-padded prompt scores as it does alone; in training the (right-padding) shortcut is on.
    On either kind of CPU eval runs bitsandbytes' dequantize and an fp32 matmul (pricer keeps its
    AVX512-BF16 repack off): the two differ only in fp32 summation over 5 more (masked) positions,
    far inside 1e-4 (bf16 kernels would differ by ~1e-3: that is the repack this guards against)."""
    trainer = tiny_trainer(tiny_model_dir, tmp_path, sample_texts, gradient_checkpointing=False)
    speedups.causal_mask_only(trainer.model, "cpu")
    model, ids = trainer.model, torch.tensor([trainer.train_dataset[0]["input_ids"]])
    padded = torch.cat([torch.full((1, 5), trainer.processing_class.pad_token_id), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(ids)], dim=1)
    with torch.no_grad():
        model.eval()
        alone = model(input_ids=ids).logits[0, -1]
        torch.testing.assert_close(model(input_ids=padded, attention_mask=mask).logits[0, -1], alone, rtol=1e-4, atol=1e-4)
        model.train()  # LoRA dropout is 0: train mode differs only by the hook
        assert not torch.allclose(model(input_ids=padded, attention_mask=mask).logits[0, -1], alone, atol=1e-3)
