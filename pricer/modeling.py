"""Build the tokenizer, the (quantized) base model and the LoRA config: one place each."""

import json
from pathlib import Path
from typing import Any

from pricer import PACKAGE_DIR
from pricer.schema import Model


def build_bnb_config(quant: dict[str, Any]):
    """`quant` holds BitsAndBytesConfig's own fields; empty means no quantization."""
    if not quant:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**quant)


def build_lora_config(lora: dict[str, Any]):
    from peft import LoraConfig

    return LoraConfig(**lora)


def load_adapter_weights(model, adapter_dir: Path) -> None:
    """A saved adapter's weights (LoRA and modules_to_save) into the same-shaped PEFT model: a run
    resumed after its training ended evaluates what it trained, without training again."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(Path(adapter_dir) / "adapter_model.safetensors"))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{adapter_dir} does not fit this model ({len(unexpected)} unknown weights, e.g. {unexpected[0]})")


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
    """The base model, quantized per `quant`, placed whole on this process's device: under torchrun
    each rank loads its own copy onto GPU LOCAL_RANK (DDP then trains the LoRA weights of all)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pricer.distributed import local_rank

    device_map = {"": local_rank()} if accelerator == "cuda" else None
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
    if quant.get("load_in_4bit"):
        keep_4bit_layout(model)
    return model


def load_for_run(model: Model, quant: dict[str, Any], compute_dtype: str, accelerator: str, liger: bool,
                 adapter: str | None = None, adapter_revision: str | None = None):
    """Tokenizer and base model as a run uses them, with a saved adapter on top if given: the one
    loader of training (no adapter: the trainer adds LoRA) and of pricer.evaluate.

    The tokenizer comes from the base model: training does
    not change it, so one path serves runs, Hub repos and the base model alone."""
    path = model.pretrained_model_name_or_path
    if model.build_tiny:
        ensure_tiny_model(path)
    tokenizer = load_tokenizer(path, model.revision, model.trust_remote_code)
    if liger:  # patches transformers' Llama classes: before the model exists
        from pricer import speedups

        speedups.apply_liger(accelerator)
    if accelerator == "cuda":
        # One attention kernel family for training and for every scoring of the run, here or in a later
        # pricer.evaluate: SDPA's cuDNN backend spent ~2 ms of CPU per layer call planning each new batch
        # shape (BENCHMARKS.md), and a process that kept it scored near-tied prices differently from
        # the training process, which did not (a re-scored run must reproduce its own report).
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)
    base = load_model(path, model.revision, model.trust_remote_code, model.attn_implementation, quant or {},
                      compute_dtype, accelerator, tokenizer.pad_token_id)
    if adapter is None:
        return tokenizer, base
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, adapter, revision=adapter_revision)
    keep_saved_dtype(model, adapter, adapter_revision)
    return tokenizer, model


def keep_saved_dtype(model, adapter: str, revision: str | None = None) -> None:
    """The loaded adapter computes in the dtype it was saved in, which is the one its run trained and
    scored it in.

    On bf16 hardware TRL keeps a 4-bit base's trainable weights in bf16, and peft's loader upcasts a
    bf16 adapter to fp32: LoRA then ran at another precision than in the run, and a re-score of an
    8B-shaped run (random weights, near-tied prices) on an H100 said test $308.56 / 6.0 % hits where
    the run's own report said $313.93 / 8.0 %. Only the file's header is read (a Hub adapter is in
    the cache already: peft just downloaded it); an adapter saved in several dtypes is left as loaded."""
    from safetensors import safe_open

    path = Path(adapter) / "adapter_model.safetensors"
    if not Path(adapter).is_dir():
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = Path(hf_hub_download(adapter, path.name, revision=revision))
        except EntryNotFoundError:
            return  # an adapter saved in the older .bin format: left as peft loaded it
    if not path.is_file():
        return
    with safe_open(str(path), framework="pt") as saved:
        dtypes = {saved.get_slice(key).get_dtype() for key in saved.keys()}
    if len(dtypes) != 1 or (dtype := SAFETENSORS_DTYPES.get(dtypes.pop())) is None:
        return
    import torch

    own = f".{model.active_adapter}."  # lora_A.default.weight, modules_to_save.default.weight, ...
    for name, param in model.named_parameters():
        if own in name and param.is_floating_point():
            param.data = param.data.to(getattr(torch, dtype))


SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}  # the header's name -> torch's


def keep_4bit_layout(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernels; returns how many.

    On a CPU with AVX512-BF16, Linear4bit.forward in eval mode without grad rewrites its
    weight into a packed layout once and keeps it, with the absmax cast to bf16 and the
    double quantization undone. Checked on such a host (bitsandbytes 0.50.2, nf4, fp32
    compute): eval outputs then move by ~0.1 from the training forward's, a training step
    after an evaluation (validation scoring, resume) gets no input gradient through the
    base layers (the packed kernel has no backward), and saving converts back with a
    re-quantized absmax, so the frozen base no longer dequantizes to the same weights
    (up to 1e-2). The repack also assumes in_features divisible by the block size.
    pricer keeps one layout on every host instead: same results on every CPU, training
    and evaluation on the same weights. GPUs never repack; weights already repacked are
    converted back (bitsandbytes' own inverse).
    """
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    from bitsandbytes.nn import Linear4bit

    count = 0
    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False  # bitsandbytes' own per-module switch for the repack
        weight = module.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            absmax = weight.quant_state.absmax  # [blocks per row, rows] in bf16
            weight.data, state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
            # the codes come back exact; the absmax as the repack left it, in block order, not re-quantized
            # (0.50.2's inverse re-quantizes a double-quantized one and leaves a single one transposed)
            state.absmax, state.nested = absmax.T.reshape(-1).float(), False
            weight.quant_state = module.quant_state = state
        count += 1
    return count
