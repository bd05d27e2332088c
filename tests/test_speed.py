"""The faster step: presets that resolve, the same loss as TRL's, batch=auto within a budget."""

import math
from pathlib import Path

import pytest
import torch
from conftest import compose_train

from pricer import modeling, speed
from pricer.frozen4bit import lean_4bit_linears
from pricer.training import build_sft_config, build_trainer

PRESETS = {"a100": [], "a100_notebook": [], "t4": ["lora=r8"], "h100": [], "cpu": ["optimizer=adamw_torch"]}
# Peak GiB ~ fixed + per row x batch, full-length rows, nf4, measured by batch=auto's probe on the H200
# (BENCHMARKS.md): no checkpointing + Liger in bf16 (h100, a100); checkpointing in fp16 (t4, probed without
# Liger; with it batch 64 peaked 10.5 GiB); no checkpointing, no Liger in bf16 (a100_notebook: 24.6 GiB
# reserved at batch 16).
LIGER_BF16 = (5.84, 0.784)
MEASURED = {"a100": LIGER_BF16, "a100_notebook": (6.2, 1.15), "h100": LIGER_BF16, "t4": (5.40, 0.098)}
# a100_notebook, the default, keeps the notebook's batch 16 on an A100 40 GB; hardware=a100 fills the card.
NOTEBOOK_BATCH = {"a100_notebook": 16}
NF4_CPU = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
               bnb_4bit_compute_dtype="float32")
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            bias="none", task_type="CAUSAL_LM")


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_resolves_to_batch_and_checkpointing(preset: str) -> None:
    cfg, choices = compose_train([f"hardware={preset}", *PRESETS[preset]])
    hw = cfg.hardware
    assert choices["hardware"] == preset
    assert isinstance(hw.per_device_train_batch_size, int) and hw.per_device_train_batch_size > 0
    assert isinstance(hw.gradient_checkpointing, bool)
    assert isinstance(hw.liger, bool) and isinstance(hw.compile, bool)
    assert not (hw.accelerator == "cpu" and hw.liger), "Liger's kernels need CUDA"
    if preset in MEASURED:  # fills the budget, with batch=auto's 10 % margin to spare
        fixed, per_row = MEASURED[preset]
        peak = fixed + per_row * hw.per_device_train_batch_size
        assert peak <= 0.9 * hw.memory_gib, f"{peak:.1f} GiB of {hw.memory_gib}"
        if preset in NOTEBOOK_BATCH:
            assert hw.per_device_train_batch_size == NOTEBOOK_BATCH[preset] and not hw.gradient_checkpointing
        else:
            assert 0.7 * hw.memory_gib <= peak, f"{peak:.1f} GiB of {hw.memory_gib} leaves the card half empty"


def tiny_trainer(model_dir: Path, tmp_path: Path, texts: list[str], gradient_checkpointing: bool, **changes):
    """A tiny nf4 model with LoRA in TRL's SFTTrainer; LoRA dropout off so two builds compute the same.
    `changes` replace SFTConfig fields."""
    from datasets import Dataset

    from pricer.data import split_prompt_completion

    tokenizer = modeling.load_tokenizer(str(model_dir), None, False)
    model = modeling.load_model(str(model_dir), None, False, "sdpa", NF4_CPU, "float32", "cpu", tokenizer.pad_token_id)
    sft = dict(per_device_train_batch_size=8, max_length=182, optim="adamw_torch", learning_rate=1e-4,
               gradient_checkpointing=gradient_checkpointing, max_steps=1, bf16=False, fp16=False, save_strategy="no") | changes
    args = build_sft_config(sft, output_dir=str(tmp_path), run_name="speed", report_to=[], seed=0, use_cpu=True)
    data = Dataset.from_list([split_prompt_completion(text) for text in texts[:64]])
    torch.manual_seed(0)  # the same LoRA init in every build
    return build_trainer(model, tokenizer, args, modeling.build_lora_config(LORA), data, [], "float32")


def loss_and_grads(trainer, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = speed.training_step(trainer, dict(batch))
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    return loss, grads


def test_faster_step_has_trls_loss_and_gradients(tiny_model_dir: Path, tmp_path: Path, sample_texts) -> None:
    """TRL's defaults (checkpointing on, eager, padding mask) against pricer's fast step (checkpointing
    off, causal mask only, 4-bit linears in two ops, compiled layers, Liger where CUDA is, rows padded to
    a multiple of 8) on the same rows: the same loss and LoRA gradients."""
    plain = tiny_trainer(tiny_model_dir, tmp_path / "plain", sample_texts, gradient_checkpointing=True)
    plain.model.gradient_checkpointing_enable()  # the Trainer does this when train() starts
    speed.apply_liger("cpu")  # a no-op here, by design
    fast = tiny_trainer(tiny_model_dir, tmp_path / "fast", sample_texts, gradient_checkpointing=False)
    speed.causal_mask_only(fast.model, "cpu")
    assert lean_4bit_linears(fast.model) == 4 * 7, "every linear of the 4 decoder layers"
    assert speed.compile_layers(fast.model, backend="aot_eager") == 4  # inductor's codegen is checked on the GPU
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
            speed.training_step(trainer, trainer.data_collator([trainer.train_dataset[i] for i in range(8 * step, 8 * step + 8)]))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        moved[optim] = {name: p.detach() - start[name] for name, p in trainer.model.named_parameters() if name in start}
        assert type(trainer.optimizer).__module__.split(".")[0] == ("bitsandbytes" if optim.startswith("paged") else "torch")
    paged, fused = moved["paged_adamw_32bit"], moved["adamw_torch_fused"]
    assert paged.keys() == fused.keys() and all(d.abs().max() > 1e-3 for d in paged.values()), "every LoRA weight moved"
    for name, delta in paged.items():
        # Adam divides by tiny gradients' roots: rounding shows at ~1e-4 of a move (decay alone moves ~1e-5)
        torch.testing.assert_close(fused[name], delta, rtol=1e-4, atol=3e-6, msg=name)


def test_causal_mask_only_keeps_the_mask_outside_training(tiny_model_dir: Path, tmp_path: Path, sample_texts,
                                                          cpu_kind: str) -> None:
    """Generation pads on the left, where the padding mask matters: in eval mode it is kept, so a
    left-padded prompt scores as it does alone; in training the (right-padding) shortcut is on.
    On either kind of CPU eval runs bitsandbytes' dequantize and an fp32 matmul (pricer keeps its
    AVX512-BF16 repack off): the two differ only in fp32 summation over 5 more (masked) positions,
    far inside 1e-4 (bf16 kernels would differ by ~1e-3: that is the repack this guards against)."""
    trainer = tiny_trainer(tiny_model_dir, tmp_path, sample_texts, gradient_checkpointing=False)
    speed.causal_mask_only(trainer.model, "cpu")
    model, ids = trainer.model, torch.tensor([trainer.train_dataset[0]["input_ids"]])
    padded = torch.cat([torch.full((1, 5), trainer.processing_class.pad_token_id), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(ids)], dim=1)
    with torch.no_grad():
        model.eval()
        alone = model(input_ids=ids).logits[0, -1]
        torch.testing.assert_close(model(input_ids=padded, attention_mask=mask).logits[0, -1], alone, rtol=1e-4, atol=1e-4)
        model.train()  # LoRA dropout is 0: train mode differs only by the hook
        assert not torch.allclose(model(input_ids=padded, attention_mask=mask).logits[0, -1], alone, atol=1e-3)


def simulated(peak_of: callable, seen: list[int]):
    """A memory probe that runs the real step and reports a simulated peak."""

    def measure(run_step, batch: int) -> float:
        seen.append(batch)
        run_step(batch)
        return peak_of(batch)

    return measure


def test_auto_batch_fits_a_simulated_budget(tiny_model_dir: Path, tmp_path: Path, sample_texts) -> None:
    """2 GiB + 0.25 GiB per row in a 10 GiB budget less 10 %: (9 - 2) / 0.25 = 28 rows, so 24."""
    trainer = tiny_trainer(tiny_model_dir, tmp_path, sample_texts, gradient_checkpointing=False)
    seen: list[int] = []
    batch = speed.pick_batch_size(speed.step_runner(trainer), 10, simulated(lambda b: 2 + 0.25 * b, seen))
    assert batch == 24 and seen == [8, 16, 32, 24]
    assert 2 + 0.25 * batch <= 0.9 * 10
    assert trainer._total_train_tokens == 0 and not trainer._metrics["train"], "probe steps leave no metrics"
    assert all(p.grad is None for p in trainer.model.parameters()), "probe gradients are dropped"
    speed.set_batch_size(trainer, batch)
    assert len(next(iter(trainer.get_train_dataloader()))["input_ids"]) == 24


def test_probe_steps_checkpoint_when_the_run_does(tiny_model_dir: Path, tmp_path: Path, sample_texts) -> None:
    """The Trainer turns checkpointing on in train(); a probe before it must too, or it over-counts memory."""
    trainer = tiny_trainer(tiny_model_dir, tmp_path, sample_texts, gradient_checkpointing=True)
    assert not trainer.model.is_gradient_checkpointing
    speed.step_runner(trainer)(2)
    assert trainer.model.is_gradient_checkpointing


def test_auto_batch_treats_out_of_memory_as_over_budget() -> None:
    """The search alone (the steps are stand-ins): an OOM caps it, and nothing fitting names the fix."""
    seen: list[int] = []
    peak = simulated(lambda b: math.inf if b > 20 else 1 + 0.5 * b, seen)  # a real GPU would raise at 32
    assert speed.pick_batch_size(lambda batch: None, 100, peak) == 16 and seen == [8, 16, 32, 24]
    with pytest.raises(MemoryError, match="gradient_checkpointing"):
        speed.pick_batch_size(lambda batch: None, 4, simulated(lambda b: 1 + 0.5 * b, []))
