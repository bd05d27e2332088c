"""TRL's SFTConfig and SFTTrainer, built here and nowhere else."""

from typing import Any


def build_sft_config(sft: dict[str, Any], output_dir: str, run_name: str, report_to: list[str], seed: int, use_cpu: bool):
    """`sft` holds SFTConfig's own field names, straight from the YAML groups.

    Hub pushes and checkpoint rotation are pricer's (pricer.push), not the Trainer's: the
    Trainer would delete a checkpoint whose upload failed. On a GPU each batch goes to the
    device from pinned memory without blocking the host, which then queues the forward.
    """
    from trl import SFTConfig

    copies = {} if use_cpu or "accelerator_config" in sft else {"accelerator_config": {"non_blocking": True}}

    return SFTConfig(
        **{key: value for key, value in sft.items() if key != "save_total_limit"},
        output_dir=output_dir,
        run_name=run_name,
        report_to=report_to,
        seed=seed,
        use_cpu=use_cpu,
        completion_only_loss=True,  # loss on the price only, as the notebook's collator did
        push_to_hub=False,
        save_total_limit=None,
        **copies,
    )


def build_trainer(model, tokenizer, args, lora_config, train_dataset, callbacks: list, compute_dtype: str):
    import torch
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=lora_config,
        callbacks=callbacks,
    )
    if compute_dtype != "bfloat16":
        # TRL casts a quantized model's trainable weights to bf16. A T4 has no bf16 and a CPU
        # runs it slowly, so off bf16 hardware the adapter trains in fp32, as the notebook's did.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    return trainer


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total); 4-bit weights count as their unpacked size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel() * (2 if param.dtype.itemsize == 1 and hasattr(param, "quant_state") else 1)
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total
