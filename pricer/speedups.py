"""Speed-ups applied to the model pricer already builds: the step gets faster, its loss and gradients stay.

TRL's SFTTrainer stays the one trainer: speed comes from what it is given. On an
H200 (BENCHMARKS.md): checkpointing off (2x at batch 16); the causal mask alone
instead of the padding mask (SDPA then skips cuDNN attention, which planned for every
new batch length on the CPU while the GPU waited); batches padded to a multiple of 8
and collated by dataloader workers (conf). Liger's fused kernels and compiled layers
save activation memory, which presets spend on a larger batch (batch=auto measures
it, in pricer.batch_size). At batch 16 the step is host-bound (~4,600 kernel launches,
the GPU busy ~130 ms of each ~210 ms step): there optimizer=adamw_torch_fused, which the card-filling presets
take, made the step 1.26x faster than the notebook's paged_adamw_32bit (a Python loop
over 256 LoRA tensors), and compiled layers cut launches and host time. At batch 80
the matmuls run at ~92 % of the chip's measured rate and take ~65 % of the step.
"""

import logging

log = logging.getLogger("pricer")


# What Liger's Llama patch rewrites in transformers' modeling_llama module (liger-kernel 0.8):
# module globals, looked up when a model is built (the classes) and at every forward (RoPE).
LIGER_LLAMA_NAMES = ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP")
_liger_originals: dict[str, object] = {}


def apply_liger(accelerator: str) -> bool:
    """Swap transformers' Llama RMSNorm, SwiGLU MLP and RoPE for Liger's fused Triton kernels.

    Liger replaces the classes in transformers' Llama module, so this must run before
    the model is instantiated. Its cross entropy stays off: TRL 1.16 already projects
    the LM head at completion positions only, and TRL's loss is the one pricer keeps.
    Triton kernels need CUDA, so elsewhere this is a logged no-op.

    The patch is process-wide until `restore_liger()`, which pricer.train calls when a job
    ends, however it ends: the next job of an in-process --multirun, without Liger, gets
    transformers' own modules. TRL/transformers' instance switch (SFTConfig.use_liger_kernel)
    is not used: it calls the same liger function with model=..., which rewrites these
    module globals too (so it leaks the same way), and it runs only when train() starts,
    after pricer's batch=auto probe has measured memory without the kernels.
    """
    if accelerator != "cuda":
        log.info("liger: off on %s (its Triton kernels need CUDA)", accelerator)
        return False
    patch_llama_with_liger()
    log.info("liger: fused RMSNorm, SwiGLU and RoPE kernels patched into transformers' Llama")
    return True


def patch_llama_with_liger() -> None:
    """Liger's own patch of modeling_llama, with the originals recorded for `restore_liger`."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama
    from transformers.models.llama import modeling_llama

    for name in LIGER_LLAMA_NAMES:
        _liger_originals.setdefault(name, getattr(modeling_llama, name))
    apply_liger_kernel_to_llama(
        rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )


def restore_liger() -> bool:
    """Undo `apply_liger`: transformers' Llama module gets its own RoPE, RMSNorm and MLP back.
    Idempotent; returns whether anything was patched. A model built while patched keeps its
    Liger layers (they are its instances), so call this when the job that built it ends."""
    if not _liger_originals:
        return False
    from transformers.models.llama import modeling_llama

    for name, original in _liger_originals.items():
        setattr(modeling_llama, name, original)
    _liger_originals.clear()
    log.info("liger: transformers' Llama modules restored")
    return True


def causal_mask_only(model, accelerator: str) -> None:
    """Train under the causal mask alone: SDPA then runs FlashAttention, with GQA in the kernel.

    TRL's collator pads on the right, so under the causal mask no real token ever sees a
    pad: the padding mask changes only the pads' own outputs, which carry no loss and no
    gradient. Dropping it in training (a pre-hook on the decoder) is exact, and lets SDPA
    skip the 4D mask, the repeat of K/V for GQA, and cuDNN's attention, which on the H200
    spent ~2 ms of CPU per layer call planning for each new batch shape (profiled at
    batch 80: the GPU sat idle ~20 % of the step). In eval mode the mask is kept:
    generation pads on the left.
    """
    base = model.get_base_model()  # peft's LoRA layers live in the base model's own modules

    def drop_padding_mask(module, args, kwargs):
        if module.training and kwargs.get("attention_mask") is not None:
            kwargs["attention_mask"] = None
        return args, kwargs

    base.model.register_forward_pre_hook(drop_padding_mask, with_kwargs=True)
    if accelerator == "cuda":
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)  # flash for causal training, mem-efficient where a mask stays
    log.info("attention: training batches run under the causal mask alone (right padding), SDPA flash kernel")


def compile_layers(model, backend: str = "inductor") -> int:
    """torch.compile each decoder layer of the (PEFT-wrapped) model; returns how many.

    Layers rather than the whole model: the 32 layers share one graph (weights are
    graph inputs), and the mask building and TRL's fused LM head stay eager.
    `dynamic=True` because every batch has its own length. At batch 16 (nf4, fused
    AdamW) the step is host-bound, and compiled layers instead of Liger made it 1.40x
    faster on the H200 (0.201 vs 0.282 s, BENCHMARKS.md run 8); the first step compiles
    for over a minute. Call it after the trainer is built, so the LoRA layers are in the
    graph. (Tried and dropped: skipping dynamo's module guards, 0.222 s; CUDA graphs of
    the layers, mode="reduce-overhead", crashed with bitsandbytes inside.)
    """
    base = model.get_base_model()  # peft's LoRA layers live in the base model's own modules
    layers = base.model.layers
    for layer in layers:
        layer.compile(backend=backend, dynamic=True)
    log.info("compile: %d decoder layers compiled (%s, dynamic shapes); the first step compiles them", len(layers), backend)
    return len(layers)
