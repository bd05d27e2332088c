"""Training throughput: the course's recipe against pricer's training step, in one run.

    python bench/train_throughput.py          # GPU: Llama 3.1 8B architecture; writes BENCHMARKS.md
    python bench/train_throughput.py --tiny   # CPU: the same pipeline on a tiny Llama (checks the script)

Random weights with Llama 3.1 8B's architecture (hidden 4096, 32 layers, 8 KV heads, vocab
128,256; speed does not depend on their values) are made once per run and saved with safetensors. Each configuration
then runs in its own process and loads them its own way: the recipe as the course
wrote it (transformers + TRL with today's defaults), pricer's through pricer.modeling,
pricer.sft, pricer.speedups and pricer.batch_size with a composed hardware/quant preset. So peak
memory, Liger's patches and compiled code never carry over from one to the next.
Items are pricer-shaped: 120..182 tokens, the last 4 the completion (the price, as
TRL masks the loss to it). Steps are timed between CUDA events (no extra syncs).
"""

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_report import write_section  # bench/bench_report.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA31_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, tie_word_embeddings=False,
    rope_parameters=dict(rope_type="llama3", rope_theta=500_000.0, factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192),
)
TINY = dict(LLAMA31_8B, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=4096)
SHORTEST, LONGEST, COMPLETION = 120, 182, 4  # tokens per item; the completion is the price + EOS
SECTION = "## Training throughput"

# (name, what the table calls it, preset overrides). "recipe" is the course; the rest are pricer's.
CONFIGS = [
    ("recipe", "course recipe: TRL defaults, nf4, batch 16, checkpointing, paged_adamw_32bit", None),
    # a100_notebook: batch 16, no checkpointing, eager, no Liger (the batch-16 rows add changes one at a time)
    ("b16", "pricer, nf4, batch 16 (the course's optimisation)", ["hardware=a100_notebook", "quant=nf4"]),
    ("b16-compile", "pricer, nf4, batch 16 (the course's optimisation), fused AdamW, compiled layers",
     ["hardware=a100_notebook", "quant=nf4", "hardware.compile=true", "optimizer=adamw_torch_fused"]),
    ("t4", "pricer hardware=t4 lora=r8 (fp16), nf4", ["hardware=t4", "quant=nf4", "lora=r8"]),
    ("t4-compile", "pricer hardware=t4 lora=r8 (fp16), nf4, compile instead of Liger",
     ["hardware=t4", "quant=nf4", "lora=r8", "hardware.liger=false", "hardware.compile=true"]),
    ("a100", "pricer hardware=a100, nf4", ["hardware=a100", "quant=nf4"]),
    ("a100-lean", "pricer hardware=a100, nf4, 4-bit linears as two ops (hardware.lean_4bit=true)",
     ["hardware=a100", "quant=nf4", "hardware.lean_4bit=true"]),
    ("a100-compile", "pricer hardware=a100, nf4, compile instead of Liger",
     ["hardware=a100", "quant=nf4", "hardware.liger=false", "hardware.compile=true"]),
    ("a100-lean-compile", "pricer hardware=a100, nf4, compile instead of Liger, 4-bit linears as two ops",
     ["hardware=a100", "quant=nf4", "hardware.liger=false", "hardware.compile=true", "hardware.lean_4bit=true"]),
    ("a100-paged", "pricer hardware=a100, nf4, the notebook's optimizer=paged_adamw_32bit",
     ["hardware=a100", "quant=nf4", "optimizer=paged_adamw_32bit"]),
    ("h100", "pricer hardware=h100, nf4", ["hardware=h100", "quant=nf4"]),
    ("h100-paged", "pricer hardware=h100, nf4, the notebook's optimizer=paged_adamw_32bit",
     ["hardware=h100", "quant=nf4", "optimizer=paged_adamw_32bit"]),
    ("h100-compile", "pricer hardware=h100, nf4, compile instead of Liger",
     ["hardware=h100", "quant=nf4", "hardware.liger=false", "hardware.compile=true"]),
    ("h100-none", "pricer hardware=h100, quant=none (bf16 LoRA)", ["hardware=h100", "quant=none"]),
    ("h100-none-compile", "pricer hardware=h100, quant=none (bf16 LoRA), compile instead of Liger",
     ["hardware=h100", "quant=none", "hardware.liger=false", "hardware.compile=true"]),
    ("a100-none", "pricer hardware=a100, quant=none (bf16 LoRA)", ["hardware=a100", "quant=none"]),
    ("b16-lean-compile", "pricer, nf4, batch 16 (the course's optimisation), fused AdamW, compiled layers, lean_4bit",
     ["hardware=a100_notebook", "quant=nf4", "hardware.compile=true", "optimizer=adamw_torch_fused", "hardware.lean_4bit=true"]),
]
SKIPPED = "hardware=t4 with quant=none is left out: 16 GB of bf16 weights alone overflow a 15 GB T4."
REWARM_STEPS = 10  # warm-up of the later batch-16 rows: the model and its shapes are warm by then
DATASET_ITEMS = 8192  # 102 steps of batch 80 per epoch: 50 warm-up + one megabatch (50) + 1 in one epoch
TINY_ITEMS = 128  # megabatches of 2 batches of 16 (group_by_length keeps 4 of them): the CPU check times few steps
# batch 16 held fixed, one change at a time on one loaded model; each row keeps the changes above it
B16_STEPS = [
    ("checkpointing on (TRL's default)", {"checkpointing": True, "nan_filter": True}),
    ("checkpointing off", {"checkpointing": False}),
    ("+ no NaN-check sync (logging_nan_inf_filter=false)", {"nan_filter": False}),
    ("+ causal mask only (SDPA flash, no cuDNN planning)", {"causal": True}),
    ("+ batches padded to a multiple of 8 (9 shapes, not 63)", {"pad8": True}),
    ("+ fused AdamW (optimizer=adamw_torch_fused: one kernel, not a Python loop over 256 tensors)", {"fused_adamw": True}),
    ("+ Liger RMSNorm/SwiGLU/RoPE, not compiled", {"liger": True}),
    ("+ the NaN-check sync back on (TRL's default)", {"nan_filter": True}),
]


# ---- the parent: rate, weights, one process per configuration, the table ----

def matmul_tflops(device: str) -> float:
    """The chip's dense matmul rate on random data, the ceiling MFU is measured against."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    if device == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
    for _ in range(10):
        a @ b
    if device == "cuda":
        end.record()
        torch.cuda.synchronize()
        seconds = begin.elapsed_time(end) / 1000
    else:
        seconds = time.perf_counter() - start
    return 2 * n**3 * 10 / seconds / 1e12


def build_weights(shape: dict, folder: Path, device: str) -> Path:
    """Random-init on the device in bf16 (no 32 GB host copy), saved once for every process."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pricer.data import PROMPT_END
    from pricer.tiny import build_tokenizer

    tokenizer = build_tokenizer([f"How much does this cost? {PROMPT_END}"] * 10)  # ids only: pad/eos matter
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def weights_folder(tiny: bool) -> Path:
    """RAM-backed /dev/shm when it holds 16 GB: every process reads the weights from memory."""
    shm = Path("/dev/shm")
    roomy = shm.exists() and shutil.disk_usage(shm).free > 40 * 2**30
    return (shm if roomy and not tiny else Path("/tmp")) / f"pricer-bench-{'tiny' if tiny else 'llama31-8b'}"


def ensure_weights(tiny: bool) -> Path:
    """The run's random weights, built on the first call (~40 s for the 8B shape on the H200)."""
    model_dir = weights_folder(tiny)
    if not (model_dir / "config.json").exists():
        build_weights(TINY if tiny else LLAMA31_8B, model_dir, "cpu" if tiny else "cuda")
    return model_dir


def run_config(name: str, args, model_dir: Path, results: Path, timeout: float, script: str = __file__,
               log: Path | None = None) -> str:
    """`script --worker name` in its own process; its output goes to `log` if given, else to ours."""
    command = [sys.executable, script, "--worker", name, "--model-dir", str(model_dir), "--results", str(results),
               "--warmup", str(args.warmup), "--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
    started = time.perf_counter()
    try:
        with log.open("w") if log else contextlib.nullcontext() as output:
            done = subprocess.run(command, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                  stdout=output, stderr=subprocess.STDOUT if log else None)
        outcome = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    except subprocess.TimeoutExpired:
        outcome = f"stopped at its {timeout:.0f} s cap"
    print(f"== {name}: {outcome} in {time.perf_counter() - started:.0f} s", flush=True)
    return outcome


def decoder_params(shape: dict) -> int:
    """The decoder layers' linear weights: 6.98e9 for Llama 3.1 8B."""
    h = shape["hidden_size"]
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    return shape["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * shape["intermediate_size"])


def table(rows: list[dict], tflops: float, shape: dict) -> list[str]:
    """Two rates: all timed steps (one-off costs such as a recompile count) and the median step (the
    steady state, which the speed goals are judged on). Decoder-matmul MFU, the other yardstick, counts 4 x decoder
    weights FLOP per token (forward + input gradient) at the median step's rate."""
    recipe = next((r for r in rows if r["name"] == "recipe"), None)
    lines = ["| configuration | optimizer | batch | checkpointing | timed steps | tokens/item | tokens/s, all steps | "
             "tokens/s, median step | samples/s, median step | s/step (median) | peak alloc GiB | peak reserved GiB | "
             "MFU (all steps) | decoder-matmul MFU (median step) | x recipe, all steps | x recipe, median step |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mean_ratio = f"{r['tokens_per_s'] / recipe['tokens_per_s']:.2f}" if recipe else "-"
        median_ratio = f"{r['median_tokens_per_s'] / recipe['median_tokens_per_s']:.2f}" if recipe else "-"
        lines.append(
            f"| {r['label']} | {r['optimizer']} | {r['batch']} | {'on' if r['checkpointing'] else 'off'} | "
            f"{r['timed_steps']} | {r['mean_item_tokens']:.0f} | "
            f"{r['tokens_per_s']:,.0f} | {r['median_tokens_per_s']:,.0f} | {r['median_samples_per_s']:,.1f} | "
            f"{r['s_per_step']:.3f} | {r['peak_alloc_gib']:.1f} | {r['peak_reserved_gib']:.1f} | "
            f"{100 * r['flop_per_s'] / tflops / 1e12:.1f} % | "
            f"{100 * r['median_tokens_per_s'] * 4 * decoder_params(shape) / tflops / 1e12:.1f} % | {mean_ratio} | {median_ratio} |")
    return lines


def report(args, rows: list[dict], outcomes: dict[str, str], tflops: float, notes: list[str]) -> str:
    import transformers
    import trl

    shape = TINY if args.tiny else LLAMA31_8B
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else platform.machine()
    missing = [f"`{name}` {outcome}" for name, outcome in outcomes.items() if outcome != "ok"]
    return "\n".join([
        SECTION, "", f"`{command_line(sys.argv[1:])}`", "",
        f"{'Tiny Llama' if args.tiny else 'Llama 3.1 8B architecture'}, random weights; {device}; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; measured "
        f"{'bf16' if not args.tiny else 'fp32'} matmul rate {tflops:,.3g} TFLOP/s. Items: {SHORTEST}..{LONGEST} "
        f"tokens, loss on the last {COMPLETION}; LoRA r 32 on q/k/v/o (r 8 for t4), dropout 0.1. Timed: at "
        f"least {args.steps} steps, rounded up to whole megabatches of group_by_length's sampler (each sorted "
        "longest first, so every length rank is timed once and every row sees the same mix of lengths), after "
        f"{args.warmup} warm-up (the later batch-16 rows, on the warm model: "
        f"{min(args.warmup, REWARM_STEPS)}); tokens/s counts non-padding tokens. MFU counts the model's "
        "matmuls (decoder linears forward + input gradient, LoRA forward + both gradients, attention, the LM head at "
        f"completion positions); decoder-matmul MFU counts 4 x {decoder_params(shape):.3g} FLOP per token. Each "
        "configuration ran in its own process; the batch-16 rows change one thing at a time on one loaded model; "
        "rows marked batch=auto ran at the batch pricer.batch_size.pick_batch_size measured for the preset's budget.",
        "", *table(rows, tflops, shape), "", *notes, SKIPPED, *([f"Not measured: {'; '.join(missing)}."] if missing else []),
    ])


def command_line(argv: list[str]) -> str:
    """The command as a reader would type it: where the output lands is theirs to choose."""
    drop = {"--out", "--markdown"}
    keep = [a for i, a in enumerate(argv) if a not in drop and (i == 0 or argv[i - 1] not in drop)]
    return " ".join(["python bench/train_throughput.py", *keep])


def main(args) -> None:
    device = "cpu" if args.tiny else "cuda"
    start = time.perf_counter()
    tflops = matmul_tflops(device)
    print(f"matmul rate: {tflops:,.1f} TFLOP/s", flush=True)
    model_dir = ensure_weights(args.tiny)
    print(f"weights in {model_dir} after {time.perf_counter() - start:.0f} s", flush=True)
    if device == "cuda":
        torch.cuda.empty_cache()
    results = args.out / "train_throughput.jsonl"
    results.unlink(missing_ok=True)
    outcomes, rows = {}, []
    for name, _, _ in CONFIGS:
        if args.only and name not in args.only:
            continue
        left = args.budget_s - (time.perf_counter() - start)
        outcomes[name] = run_config(name, args, model_dir, results, min(args.cap_s, left)) if left > 30 else "skipped: out of time"
        rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    last = {r["name"]: r for r in rows}  # the batch-16 rows carry their notes cumulatively
    notes = [line for r in last.values() for line in r.get("notes", [])]
    section = report(args, rows, outcomes, tflops, notes)
    if args.markdown:
        write_section(args.markdown, SECTION, section)
    print(section, flush=True)


# ---- a worker: one configuration in its own process ----

def synthetic_items(n: int, vocab: int, seed: int = 0):
    """Token ids >= 1000 (Llama 3's ids 0..999 are the price tokens); loss on the last 4."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(SHORTEST, LONGEST + 1, (n,), generator=generator).tolist()
    ids = [torch.randint(1000, vocab, (length,), generator=generator).tolist() for length in lengths]
    masks = [[0] * (length - COMPLETION) + [1] * COMPLETION for length in lengths]
    return Dataset.from_dict({"input_ids": ids, "completion_mask": masks})


class StepClock:
    """A TrainerCallback that marks each step's start with a CUDA event (a clock read on CPU)."""

    def __init__(self, cuda: bool):
        from transformers import TrainerCallback

        self.cuda, self.marks = cuda, []
        self.callback = type("Clock", (TrainerCallback,), {"on_step_begin": lambda _s, *a, **k: self.mark()})()

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Begin-to-begin, so a step includes its data, forward, backward, optimizer and callbacks."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks[:-1], self.marks[1:], strict=True)]
        return [b - a for a, b in zip(self.marks[:-1], self.marks[1:], strict=True)]


COUNTS = "bench_counts"  # a batch key the collator adds and the counting hook takes out before the model


def counting(collate):
    """Wrap the collator to note each batch's real tokens on the CPU, before it reaches the GPU.

    The counts ride in the batch as plain ints (accelerate moves only tensors), so they
    come back from dataloader worker processes too."""

    def collate_and_count(examples):
        batch = collate(examples)
        lengths = batch["attention_mask"].sum(1)
        batch[COUNTS] = (int(lengths.sum()), int((lengths**2).sum()), int((batch["labels"] != -100).sum()), len(examples))
        return batch

    return collate_and_count


def take_counts(trainer, log: list) -> Callable[[], None]:
    """Take each batch's counts out as the Trainer fetches it; returns the undo."""
    fetch = trainer.get_batch_samples

    def fetch_and_count(*args, **kwargs):
        batches, items = fetch(*args, **kwargs)
        log.extend(batch.pop(COUNTS) for batch in batches)
        return batches, items

    trainer.get_batch_samples = fetch_and_count
    return lambda: vars(trainer).pop("get_batch_samples")


def model_flop(shape: dict, lora_params: int, tokens: int, squares: int, completion: int) -> float:
    """Matmul FLOP of one step: frozen linears 4N per token (forward + input gradient), LoRA 6N,
    attention 12 x d x L^2 per layer (QK and PV, forward + backward), LM head 4 x d x V per completion token."""
    h, layers = shape["hidden_size"], shape["num_hidden_layers"]
    linears = (4 * decoder_params(shape) + 6 * lora_params) * tokens
    return linears + 12 * layers * h * squares + 4 * h * shape["vocab_size"] * completion


def timed_steps(requested: int, trainer) -> int:
    """The timed steps, rounded up to whole megabatches of group_by_length's sampler.

    The sampler sorts each megabatch (50 batches; fewer when the data holds under 200 batches) longest
    first, so a shorter window sees one end of the length range: 12 steps timed the recipe on
    its 170-182-token items and hardware=t4 (batch 64, megabatches of 32) on 125-147 (run 9).
    Any run of one megabatch's steps takes each length rank once, at every batch size."""
    if trainer.args.train_sampling_strategy != "group_by_length":
        return requested
    batch = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    per_megabatch = max(1, min(len(trainer.train_dataset) // (batch * 4), 50))
    return math.ceil(requested / per_megabatch) * per_megabatch


def timed_train(trainer, settings: dict, args, shape: dict, warmup: int | None = None) -> dict:
    """Train warm-up + timed + 1 steps; the median of the timed ones, with the memory they peaked at."""
    from pricer.sft import count_parameters

    warmup = args.warmup if warmup is None else warmup
    steps = timed_steps(args.steps, trainer)
    cuda = torch.cuda.is_available() and not args.tiny
    clock, counts = StepClock(cuda), []
    trainer.add_callback(clock.callback)
    collate = trainer.data_collator
    trainer.data_collator = counting(collate)
    untake = take_counts(trainer, counts)
    trainer.args.max_steps = warmup + steps + 1
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    trainer.remove_callback(clock.callback)
    trainer.data_collator = collate
    untake()
    seconds = clock.seconds()[warmup:warmup + steps]
    timed = counts[warmup:warmup + steps]
    tokens, rows = sum(c[0] for c in timed), sum(c[3] for c in timed)
    lora = count_parameters(trainer.model)[0]
    flop = sum(model_flop(shape, lora, c[0], c[1], c[2]) for c in timed)
    gib = 2**30
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # inside accelerate's wrapper
    return settings | {
        "optimizer": type(optimizer).__name__ + (" (fused)" if optimizer.defaults.get("fused") else ""),
        "batch": trainer.args.per_device_train_batch_size, "checkpointing": trainer.args.gradient_checkpointing,
        "tokens_per_s": tokens / sum(seconds), "samples_per_s": rows / sum(seconds),
        "median_tokens_per_s": statistics.median(c[0] / s for c, s in zip(timed, seconds, strict=True)),
        "median_samples_per_s": statistics.median(c[3] / s for c, s in zip(timed, seconds, strict=True)),
        "timed_steps": steps, "mean_item_tokens": tokens / rows,
        "s_per_step": statistics.median(seconds), "flop_per_s": flop / sum(seconds), "step_s": seconds,
        "step_tokens": [c[0] for c in timed],
        "peak_alloc_gib": torch.cuda.max_memory_allocated() / gib if cuda else 0.0,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / gib if cuda else 0.0,
    }


def recipe_trainer(model_dir: Path, data, args):
    """The course's notebook cell (conf/train.yaml's values), in today's TRL (max_length, processing_class,
    completion-only loss on pre-tokenized items, warmup_steps as a ratio, group_by_length sampling)."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = not args.tiny
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    quant_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    base_model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant_config,
                                                      device_map="auto" if cuda else None)
    base_model.generation_config.pad_token_id = tokenizer.pad_token_id
    lora_parameters = LoraConfig(lora_alpha=64, lora_dropout=0.1, r=32, bias="none", task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "v_proj", "k_proj", "o_proj"])
    train_parameters = SFTConfig(
        output_dir=str(args.results.parent / "recipe"), num_train_epochs=1, per_device_train_batch_size=16,
        gradient_accumulation_steps=1, optim="paged_adamw_32bit" if cuda else "adamw_torch", save_steps=2000,
        save_total_limit=10, logging_steps=50, learning_rate=1e-4, weight_decay=0.001, fp16=False, bf16=cuda,
        max_grad_norm=0.3, warmup_steps=0.03, train_sampling_strategy="group_by_length", lr_scheduler_type="cosine",
        report_to=[], max_length=LONGEST, completion_only_loss=True, save_strategy="no", use_cpu=not cuda,
    )
    return SFTTrainer(model=base_model, train_dataset=data, peft_config=lora_parameters,
                      processing_class=tokenizer, args=train_parameters)


def composed(overrides: list[str], tiny: bool) -> tuple[dict, dict]:
    """The preset as pricer composes it: (SFTConfig fields, pricer's own keys + lora + quant)."""
    from dataclasses import fields

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from trl import SFTConfig

    cpu = ["hardware.accelerator=cpu", "hardware.bf16=false", "hardware.fp16=false",
           "hardware.compute_dtype=float32", "optimizer=adamw_torch"] if tiny else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "tracking=none", "hub.push=false", *cpu])
    plain = OmegaConf.to_container(cfg, resolve=True)
    sft_fields = {f.name for f in fields(SFTConfig)}
    hardware = plain["hardware"]
    sft = {**plain["training"], **plain["optimizer"], **plain["scheduler"],
           **{k: v for k, v in hardware.items() if k in sft_fields}}
    own = {k: v for k, v in hardware.items() if k not in sft_fields}
    return sft | {"save_strategy": "no"}, own | {"lora": plain["lora"], "quant": plain["quant"]}


def pricer_trainer(model_dir: Path, data, overrides: list[str], args, causal: bool = True):
    """pricer's own path: its preset, its model loading, its trainer, its speed-ups
    (`causal=False` leaves the padding mask in, for the one-change-at-a-time rows)."""
    from pricer import modeling, speedups
    from pricer.sft import build_sft_config, build_trainer

    sft, own = composed(overrides, args.tiny)
    if own.get("liger"):
        speedups.apply_liger(own["accelerator"])
    tokenizer = modeling.load_tokenizer(str(model_dir), None, False)
    model = modeling.load_model(str(model_dir), None, False, "sdpa", own["quant"], own["compute_dtype"],
                                own["accelerator"], tokenizer.pad_token_id)
    sft_args = build_sft_config(sft, output_dir=str(args.results.parent / "pricer"), run_name="bench",
                                report_to=[], seed=42, use_cpu=own["accelerator"] == "cpu")
    trainer = build_trainer(model, tokenizer, sft_args, modeling.build_lora_config(own["lora"]), data, [],
                            own["compute_dtype"])
    if causal:
        speedups.causal_mask_only(trainer.model, own["accelerator"])
    if own.get("lean_4bit") and own["quant"].get("load_in_4bit"):
        from pricer.frozen4bit import lean_4bit_linears

        lean_4bit_linears(trainer.model)
    if own.get("compile"):
        speedups.compile_layers(trainer.model)
    return trainer, own


def auto_batch(trainer, own: dict, label: str) -> str:
    """batch=auto for the preset's budget, as the entrypoint runs it: real steps, then the batch is set."""
    from pricer import batch_size

    preset = trainer.args.per_device_train_batch_size
    batch = batch_size.pick_batch_size(batch_size.step_runner(trainer), own["memory_gib"])
    batch_size.set_batch_size(trainer, batch)
    return f"{label}: batch=auto picked {batch} for {own['memory_gib']} GiB less 10 % (the preset file says {preset})."


def batch16_steps(trainer, label: str, args, shape: dict, save) -> None:
    """One change at a time on one loaded model (Liger here patches the built model in place).

    The first row warms up for --warmup steps; the later ones find the batch shapes' kernels
    loaded and warm up for at most REWARM_STEPS.

    Before each is timed, one fixed batch's loss (same seed, so the same LoRA dropout masks)
    checks that the change keeps TRL's loss."""
    from transformers.training_args import OptimizerNames

    from pricer import batch_size, speedups

    fixed = [trainer.train_dataset[i] for i in range(16)]
    lora = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    settings, losses = {"causal": False, "pad8": False, "liger": False}, []
    for step, change in B16_STEPS:
        if change.get("liger") and args.tiny:
            continue  # Liger's Triton kernels need CUDA
        settings |= change
        if change.get("causal"):  # hooks and patches: once on, they stay on for the later rows
            speedups.causal_mask_only(trainer.model, "cpu" if args.tiny else "cuda")
        if change.get("fused_adamw"):  # the Trainer builds the new optimizer when train() next starts
            trainer.args.optim, trainer.optimizer = OptimizerNames.ADAMW_TORCH_FUSED, None
        if change.get("liger"):
            from liger_kernel.transformers import apply_liger_kernel_to_llama

            apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                        fused_linear_cross_entropy=False, model=trainer.model.get_base_model())
        trainer.args.gradient_checkpointing = settings["checkpointing"]
        trainer.args.logging_nan_inf_filter = settings["nan_filter"]
        trainer.data_collator.pad_to_multiple_of = 8 if settings["pad8"] else None
        if settings["checkpointing"]:
            trainer.model.enable_input_require_grads()  # as SFTTrainer does when built with checkpointing
        else:
            trainer.model.gradient_checkpointing_disable()
        with torch.no_grad():  # the weights every check starts from, whatever the timed steps did
            for name, p in trainer.model.named_parameters():
                if name in lora:
                    p.copy_(lora[name])
        torch.manual_seed(0)
        losses.append(f"{step} {float(batch_size.training_step(trainer, trainer.data_collator(fixed))):.5f}")
        trainer.model.zero_grad(set_to_none=True)
        note = f"Loss of one fixed batch of 16 (same dropout masks) after each batch-16 change: {'; '.join(losses)}."
        warmup = args.warmup if len(losses) == 1 else min(args.warmup, REWARM_STEPS)
        save(timed_train(trainer, {"label": f"{label}: {step}", "notes": [note]}, args, shape, warmup))


def worker(args) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # pricer.batch_size's arithmetic
    shape = TINY if args.tiny else LLAMA31_8B
    name, label, overrides = next(c for c in CONFIGS if c[0] == args.worker)
    data = synthetic_items(TINY_ITEMS if args.tiny else DATASET_ITEMS, shape["vocab_size"])

    def save(row: dict) -> None:
        with args.results.open("a") as f:
            f.write(json.dumps(row | {"name": name}) + "\n")
        print(f"{row['label']}: {row['tokens_per_s']:,.0f} tokens/s, {row['s_per_step']:.3f} s/step, "
              f"peak {row['peak_alloc_gib']:.1f} GiB", flush=True)

    if name == "recipe":
        save(timed_train(recipe_trainer(args.model_dir, data, args), {"label": label}, args, shape))
        return
    trainer, own = pricer_trainer(args.model_dir, data, overrides, args, causal=name != "b16")
    if name == "b16":
        batch16_steps(trainer, label, args, shape, save)
        return
    # compiled layers run at the preset's batch: full-length probe batches need no mask, a graph of their own
    auto = own["accelerator"] == "cuda" and name in args.auto and not own.get("compile")
    notes = [auto_batch(trainer, own, label)] if auto else []
    speed_ups = [k for k in ("liger", "compile") if own.get(k)] + (["batch=auto"] if auto else [])
    save(timed_train(trainer, {"label": " + ".join([label, *speed_ups]), "notes": notes}, args, shape))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama on the CPU: checks the pipeline")
    parser.add_argument("--only", nargs="+", help=f"a subset of {[c[0] for c in CONFIGS]}")
    parser.add_argument("--auto", nargs="*", default=["h100-none", "a100-none"],
                        help="rows that run at the batch batch=auto picks for the preset's budget (GPU only)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cap-s", type=float, default=150, help="time cap of one configuration's process")
    parser.add_argument("--budget-s", type=float, default=530, help="the whole run's time; later rows are skipped")
    parser.add_argument("--markdown", type=Path, help="the file whose section the table replaces (default: "
                        "BENCHMARKS.md; none with --tiny, whose CPU numbers must not replace the GPU's)")
    add_process_arguments(parser)
    args = parser.parse_args()
    if args.markdown is None and not args.tiny:
        args.markdown = ROOT / "BENCHMARKS.md"
    return args


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """Where results go, and the hidden arguments a configuration's own process is started with."""
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)


def run_as_parent_or_worker(arguments: argparse.Namespace, parent: Callable, child: Callable) -> None:
    """The same script is the parent and, with --worker, one configuration's process."""
    if arguments.worker:
        arguments.results.parent.mkdir(parents=True, exist_ok=True)
        child(arguments)
        sys.stdout.flush()
        os._exit(0)  # the row is saved; inductor's compile workers can hold a clean exit for minutes
    parent(arguments)


if __name__ == "__main__":
    run_as_parent_or_worker(parse(), main, worker)
