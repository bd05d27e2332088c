"""Every option of every group composes and builds its library objects (no weights)."""

import enum
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import CONF_DIR, ROOT, compose_train

from pricer.config import validate
from pricer.modeling import build_bnb_config, build_lora_config
from pricer.sft import build_sft_config

GROUPS = ["model", "lora", "quant", "optimizer", "scheduler", "hardware", "data", "tracking", "experiment"]
# Options that need a value no preset can know.
REQUIRED = {
    ("data", "local"): ["data.data_files.train=a.jsonl", "data.data_files.test=b.jsonl"],
    ("hardware", "cpu"): ["optimizer=adamw_torch"],  # paged optimizers need CUDA
}
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]
# pricer rotates checkpoints itself (after their push), so the Trainer is given none to delete
PRICER_OWN_SFT_KEYS = {"save_total_limit"}


def build_all(overrides: list[str]):
    cfg, choices = compose_train(overrides)
    run = validate(cfg, choices, check_machine=False)
    sft = build_sft_config(run.sft, output_dir="unused", run_name="r", report_to=[], seed=run.seed, use_cpu=True)
    return run, build_lora_config(run.lora), build_bnb_config(run.quant), sft


def as_written(built, value):
    """A library object's field as the YAML spells it: an enum by its value, a dtype by its name, a
    list that peft keeps as a set as the YAML's list."""
    if isinstance(built, enum.Enum):
        return built.value
    if isinstance(built, torch.dtype):
        return str(built).removeprefix("torch.")
    if isinstance(built, set) and isinstance(value, list):
        return sorted(built, key=value.index) if built == set(value) else sorted(built)
    return built


def llama_on_meta():
    """A Llama with the tiny model's layer names and shapes, on the meta device: no memory, no weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pricer.tiny import TINY_LLAMA

    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(vocab_size=2048, **TINY_LLAMA))


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_builds(group: str, option: str) -> None:
    """What each preset says reaches the library objects unchanged (a key dropped or renamed on the way
    fails here), the trainer's precision is the one the hardware computes in, and its LoRA attaches to
    a Llama's layers as named, at the update scale alpha / r = 2 that lets a rank change keep the lr."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    overrides = [f"{group}={option}", *REQUIRED.get((group, option), [])]
    run, lora, bnb, sft = build_all(overrides)
    for built, values in ((lora, run.lora), (bnb, run.quant), (sft, run.sft)):
        for key, value in values.items():
            if key not in PRICER_OWN_SFT_KEYS:
                assert as_written(getattr(built, key), value) == value, key
    assert sft.save_total_limit is None
    assert (bnb is None) == (not run.quant)

    assert (sft.bf16, sft.fp16) == (run.hardware.compute_dtype == "bfloat16", run.hardware.compute_dtype == "float16")
    if bnb is not None and bnb.load_in_4bit:
        assert bnb.bnb_4bit_compute_dtype == getattr(torch, run.hardware.compute_dtype), "4-bit matmuls in the trainer's dtype"

    model = get_peft_model(llama_on_meta(), lora)
    adapted = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    suffixes = {name.rsplit(".", 1)[-1] for name in adapted}
    if lora.target_modules == "all-linear":
        assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    else:
        assert suffixes == set(lora.target_modules), "every named layer exists in a Llama and is adapted"
    assert len(adapted) == len(suffixes) * model.config.num_hidden_layers
    assert {m.scaling["default"] for m in adapted.values()} == {2.0}
    wrapped = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)}
    assert wrapped == set(lora.modules_to_save or []), "modules_to_save train in full"


def test_defaults_reproduce_the_notebook() -> None:
    """The course notebook's values (conf/train.yaml says where each comes from), value by value."""
    run, lora, bnb, sft = build_all([])
    assert run.model.pretrained_model_name_or_path == "meta-llama/Meta-Llama-3.1-8B"
    assert run.project == "pricer" and run.data.path == "ed-donner/pricer-data"
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.bias) == (32, 64, 0.1, "none")
    assert set(lora.target_modules) == {"q_proj", "v_proj", "k_proj", "o_proj"} and lora.task_type == "CAUSAL_LM"
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert str(bnb.bnb_4bit_compute_dtype) == "torch.bfloat16"
    assert (sft.learning_rate, sft.lr_scheduler_type.value, sft.warmup_steps) == (1e-4, "cosine", 0.03)
    assert (sft.optim.value, sft.weight_decay, sft.max_grad_norm) == ("paged_adamw_32bit", 0.001, 0.3)
    assert (sft.per_device_train_batch_size, sft.gradient_accumulation_steps, sft.bf16) == (16, 1, True)
    assert (sft.logging_steps, sft.save_steps, run.sft["save_total_limit"]) == (50, 2000, 10)
    assert sft.train_sampling_strategy == "group_by_length" and sft.eval_strategy.value == "no"
    assert run.hub.private and run.hub.hub_strategy == "every_save"


def test_t4_preset_is_fp16_without_bf16() -> None:
    run, lora, bnb, sft = build_all(["lora=r8", "hardware=t4"])
    assert (lora.r, lora.lora_alpha) == (8, 16)
    assert sft.fp16 and not sft.bf16 and str(bnb.bnb_4bit_compute_dtype) == "torch.float16"
    assert sft.gradient_checkpointing, "a 15 GiB card needs the recompute to fit its batch"
    assert sft.dataloader_num_workers == 1, "a Colab T4 has 2 CPU cores: one collates, one trains"


def test_gpu_runs_load_batches_beside_the_step() -> None:
    """On a GPU the next batches are collated by workers and copied from pinned memory without blocking
    the host; batches are padded to a multiple of 8. On the CPU the copy has nowhere to go."""
    for hardware, workers in (("a100_notebook", 2), ("a100", 2), ("h100", 2)):
        run, _, _, sft = build_all([f"hardware={hardware}"])
        assert (sft.dataloader_num_workers, sft.pad_to_multiple_of) == (workers, 8)
        # as on a GPU (use_cpu=False); bf16 off only because TrainingArguments checks for a GPU that has it
        on_gpu = build_sft_config(run.sft | {"bf16": False}, output_dir="unused", run_name="r", report_to=[],
                                  seed=0, use_cpu=False)
        assert on_gpu.accelerator_config.non_blocking and on_gpu.dataloader_pin_memory
    run, _, _, sft = build_all(["experiment=demo"])
    assert sft.dataloader_num_workers == 0 and not sft.accelerator_config.non_blocking


def test_card_filling_presets_take_the_fused_adamw_and_the_command_line_wins() -> None:
    """hardware=a100/h100/t4 swap bitsandbytes' paged AdamW for torch's fused one (same step: test_speedups);
    the default run keeps the notebook's, and optimizer=... on the command line beats the preset's choice."""
    for hardware in ("a100", "h100", "t4"):
        _, choices = compose_train([f"hardware={hardware}"])
        assert choices["optimizer"] == "adamw_torch_fused", hardware
        run, _, _, sft = build_all([f"hardware={hardware}"])
        assert (sft.optim.value, sft.weight_decay, sft.max_grad_norm, sft.learning_rate) == ("adamw_torch_fused", 0.001, 0.3, 1e-4)
    for overrides in (["hardware=a100", "optimizer=paged_adamw_8bit"], ["optimizer=paged_adamw_8bit", "hardware=h100"]):
        assert build_all(overrides)[3].optim.value == "paged_adamw_8bit", overrides
    assert build_all(["hardware=a100_notebook"])[3].optim.value == "paged_adamw_32bit"


def test_cfg_job_prints_config_without_torch() -> None:
    """`--cfg job` answers from the YAML alone: no torch import, so it is instant."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['pricer.train', 'lora=r8', 'hardware=t4', '--cfg', 'job']\n"
        "try:\n    runpy.run_module('pricer.train', run_name='__main__')\n"
        "finally:\n    print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "NO_TORCH" in out.stderr
    printed = yaml.safe_load(out.stdout)
    assert (printed["lora"]["r"], printed["lora"]["lora_alpha"]) == (8, 16)
    assert printed["hardware"]["fp16"] is True and printed["hardware"]["bf16"] is False
