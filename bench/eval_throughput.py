"""Evaluation throughput: the course's two loops against pricer's batched evaluation.

    python bench/eval_throughput.py                     # GPU: Llama 3.1 8B shape, nf4, writes BENCHMARKS.md
    python bench/eval_throughput.py --tiny --device cpu  # a CPU smoke run of the same code

The model has Llama 3.1 8B's architecture with random weights, quantized to nf4
as QLoRA evaluates it (speed does not depend on the weights' values, only on the shapes).
Prompts are synthetic token ids of 120..182 tokens (the data's range), drawn from
ids >= 1000 so that ids 1..999 act as Llama 3's price tokens.
"""

import argparse
import platform
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_report import write_section  # noqa: E402  (bench/bench_report.py, beside this script)
from omegaconf import OmegaConf  # noqa: E402

from pricer.predict import predict_ids  # noqa: E402

# what a run predicts with: conf/train.yaml's evaluation group
EVALUATION = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "train.yaml").evaluation

LLAMA31_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
    rope_parameters=dict(rope_type="llama3", rope_theta=500_000.0, factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192),
)
TINY = dict(LLAMA31_8B, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=4096)
SHORTEST, LONGEST = 120, 182  # tokens per prompt in the data
SECTION = "## Evaluation throughput"


def build_model(shape: dict, device: str, dtype: torch.dtype, nf4: bool) -> nn.Module:
    """Random-init on the device itself (no 16 GB host copy), then nf4 layer by layer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, eos_token_id=None, bos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate in 16 bits from the start: 16 GB, not 32
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.eos_token_id = None  # always 3 new tokens, as a trained model answers
    if nf4:
        quantize_nf4(model.model.layers, dtype)
    return model


def quantize_nf4(root: nn.Module, compute_dtype: torch.dtype) -> None:
    """What from_pretrained does with BitsAndBytesConfig(nf4, double quant): every
    decoder Linear becomes a bnb Linear4bit; embeddings and lm_head stay in 16 bits."""
    import bitsandbytes as bnb

    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                                          device="meta")
                layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                                 quant_type="nf4")
                setattr(parent, name, layer.to(child.weight.device))  # .to() quantizes


def synthetic_prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(SHORTEST, LONGEST + 1, (n,), generator=generator).tolist()
    return [torch.randint(1000, vocab, (length,), generator=generator).tolist() for length in lengths]


def price_values(vocab: int) -> torch.Tensor:
    values = torch.zeros(vocab)
    values[1:1000] = torch.arange(1, 1000, dtype=torch.float32)
    return values


def course_generate_loop(model, prompts: list[list[int]], values: torch.Tensor) -> list[float]:
    """The course's first tester: one prompt at a time, generate 3 tokens, parse the answer."""
    device = next(model.parameters()).device
    guesses = []
    for ids in prompts:
        inputs = torch.tensor([ids], device=device)
        attention_mask = torch.ones(inputs.shape, device=device)
        with torch.no_grad():
            outputs = model.generate(inputs, attention_mask=attention_mask, max_new_tokens=3,
                                     num_return_sequences=1, pad_token_id=0)
        guesses.append(float(values[outputs[0, len(ids)].item()]))  # stands in for decode + regex
    return guesses


def course_forward_loop(model, prompts: list[list[int]], values: torch.Tensor, top_k: int = EVALUATION.top_k) -> list[float]:
    """The course's improved predictor: one prompt, one forward, weighted top-3 on the CPU."""
    device = next(model.parameters()).device
    guesses = []
    for ids in prompts:
        inputs = torch.tensor([ids], device=device)
        attention_mask = torch.ones(inputs.shape, device=device)
        with torch.no_grad():
            outputs = model(inputs, attention_mask=attention_mask)
            next_token_logits = outputs.logits[:, -1, :].to("cpu")
        top_prob, top_token_id = torch.softmax(next_token_logits.float(), dim=-1).topk(top_k)
        prices, weights = [], []
        for i in range(top_k):
            price = float(values[top_token_id[0][i]])  # stands in for float(tokenizer.decode(...))
            if price > 0:
                prices.append(price)
                weights.append(top_prob[0][i])
        total = sum(p * w for p, w in zip(prices, weights, strict=True))
        guesses.append(float(total / sum(weights)) if prices else 0.0)  # the course returned a tuple here
    return guesses


def plain_batched_forward(model, prompts: list[list[int]], values: torch.Tensor, batch: int = 64) -> list[float]:
    """The reference path: prompts in their own order, left padding with a mask, last logits only."""
    from pricer.predict import expected_price

    device = next(model.parameters()).device
    values = values.to(device)
    guesses = []
    with torch.inference_mode():
        for first in range(0, len(prompts), batch):
            rows = prompts[first : first + batch]
            width = max(len(r) for r in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, row in enumerate(rows):
                ids[r, width - len(row):] = torch.tensor(row)
                mask[r, width - len(row):] = 1
            logits = model(ids.to(device), attention_mask=mask.to(device), logits_to_keep=1).logits[:, -1]
            guesses += expected_price(logits, values, 3).tolist()
    return guesses


def timed(fn, device: str) -> tuple[float, list[float]]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def command_line(argv: list[str]) -> str:
    """The command as a reader would type it: the output path is where they want it."""
    keep = [a for i, a in enumerate(argv) if a != "--markdown" and (i == 0 or argv[i - 1] != "--markdown")]
    return " ".join(["python bench/eval_throughput.py", *keep])


def pricer_rows(model, prompts, values, item_counts, budgets, device: str, label: str) -> list[tuple[str, int, float]]:
    rows = []
    for items in item_counts:
        for tokens in budgets:
            seconds, _ = timed(partial(predict_ids, model, prompts[:items], values, EVALUATION.top_k, tokens), device)
            rows.append((f"pricer.predict: sorted batches of <= {tokens:,} tokens{label}", items, seconds))
    return rows


def report(args, rows: list[tuple[str, int, float]], dtype: torch.dtype, found: list[tuple[float, float]]) -> str:
    """The BENCHMARKS.md section: how it was run, on what, and the table."""
    import transformers

    agree = sum(abs(a - b) <= 0.01 * a for a, b in found) / max(len(found), 1)
    base = rows[0][1] / rows[0][2]
    table = ["| method | items | seconds | items/s | x generate loop |", "|---|---:|---:|---:|---:|"]
    table += [f"| {name} | {n} | {s:.2f} | {n / s:.1f} | {n / s / base:.1f} |" for name, n, s in rows]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    memory = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if args.device == "cuda" else ""
    return "\n".join([
        SECTION,
        "",
        f"`{command_line(sys.argv[1:])}`",
        "",
        f"{'tiny Llama' if args.tiny else 'Llama 3.1 8B architecture'}, random weights, "
        f"{str(dtype).split('.')[1]}{'' if args.no_nf4 else ' compute, nf4 weights (double quant)'}; {device_name}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}{memory}. Prompts: synthetic, "
        f"{SHORTEST}..{LONGEST} tokens; top-3 weighted price as in the course. Where the course's loop finds a "
        f"price in its top 3 ({len(found)} of the first {args.forward_items} items), pricer's answer is within "
        f"1 % of it for {100 * agree:.0f} % (random weights give near-flat logits, so rounding that differs with "
        f"the batch shape can reorder the top 3).",
        "",
        *table,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script, not the speed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-nf4", action="store_true", help="keep bf16 weights")
    parser.add_argument("--generate-items", type=int, default=20)
    parser.add_argument("--forward-items", type=int, default=50)
    parser.add_argument("--plain-items", type=int, default=1000)
    parser.add_argument("--items", type=int, nargs="+", default=[250, 2000])
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[EVALUATION.batch_tokens])
    parser.add_argument("--liger", action="store_true",
                        help="then patch in Liger's fused RMSNorm/SwiGLU/RoPE (CUDA, liger-kernel) and time again")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args()

    shape = TINY if args.tiny else LLAMA31_8B
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    start = time.perf_counter()
    model = build_model(shape, args.device, dtype, nf4=not args.no_nf4)
    print(f"model built in {time.perf_counter() - start:.1f} s", flush=True)
    values = price_values(shape["vocab_size"])
    prompts = synthetic_prompts(max(args.items + [args.generate_items, args.forward_items, args.plain_items]),
                                shape["vocab_size"])

    warm = prompts[:4]  # kernels, cuBLAS handles and the allocator's pools, before any clock starts
    course_generate_loop(model, warm, values)
    course_forward_loop(model, warm, values)
    plain_batched_forward(model, prompts[:128], values)
    for tokens in args.batch_tokens:
        predict_ids(model, prompts[:256], values, EVALUATION.top_k, tokens)

    rows = []
    seconds, _ = timed(lambda: course_generate_loop(model, prompts[: args.generate_items], values), args.device)
    rows.append(("course loop: generate 3 tokens, 1 prompt at a time", args.generate_items, seconds))
    seconds, alone = timed(lambda: course_forward_loop(model, prompts[: args.forward_items], values), args.device)
    rows.append(("course improved loop: 1 forward, 1 prompt at a time", args.forward_items, seconds))
    seconds, _ = timed(lambda: plain_batched_forward(model, prompts[: args.plain_items], values), args.device)
    rows.append(("plain batched forward: batch 64, given order, left padding + mask", args.plain_items, seconds))
    rows += pricer_rows(model, prompts, values, args.items, args.batch_tokens, args.device, "")
    batched = predict_ids(model, prompts[: args.forward_items], values, EVALUATION.top_k, EVALUATION.batch_tokens)
    found = [(a, b) for a, b in zip(alone, batched, strict=True) if a > 0]  # elsewhere pricer's fallback answers, not 0
    write_section(args.markdown, SECTION, report(args, rows, dtype, found))
    if args.liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False, model=model)
        for tokens in args.batch_tokens:
            predict_ids(model, prompts[:256], values, EVALUATION.top_k, tokens)  # Triton compiles its kernels here
        rows += pricer_rows(model, prompts, values, args.items, args.batch_tokens, args.device, " + Liger kernels")
        write_section(args.markdown, SECTION, report(args, rows, dtype, found))
    print(report(args, rows, dtype, found), flush=True)
    print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
