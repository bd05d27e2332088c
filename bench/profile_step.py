"""Where a training step's GPU time goes: pricer's step under a preset, profiled kernel by kernel.

    python bench/profile_step.py --run "h100|80|hardware=h100 quant=nf4" --run "t4|64|hardware=t4 lora=r8"
    python bench/profile_step.py --tiny --run "cpu|8|hardware=cpu"      # CPU: checks the script

Each --run is "name|batch|overrides[|flags]" and runs in its own process on the weights
bench/train_throughput.py builds (Llama 3.1 8B architecture, random values). A run
times steps between CUDA events, then profiles two more with torch.profiler and
prints the GPU time by kernel family (matmul, bnb dequantize, attention, Triton,
elementwise, reductions, copies), how busy the GPU was, and the heaviest kernels.
The train_throughput table says how fast; this says why.
"""

import argparse
import json
import re
import statistics
import time
from itertools import pairwise

import torch
import train_throughput as tt  # bench/train_throughput.py, beside this script

FAMILIES = [  # first match wins; kernel names as CUDA and Triton report them
    ("bnb dequantize", r"dequant|kDequantize"),
    ("attention", r"fmha|flash|attention|attn"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|sm90_|cublas|splitK|wgmma"),
    ("triton (liger/inductor)", r"^triton|_kernel$|rms_norm|swiglu|rope|^_"),
    ("reduction", r"reduce|Reduce|norm|softmax|sum"),
    ("copy/cast", r"copy|Copy|Memcpy|Memset|cast|fill"),
    ("elementwise", r"elementwise|vectorized|unrolled|Elementwise"),
]


def family(kernel: str) -> str:
    return next((name for name, pattern in FAMILIES if re.search(pattern, kernel)), "other")


def busy_us(intervals: list[tuple[int, int]]) -> float:
    """Union of kernel intervals: the time the GPU ran anything at all."""
    total, end = 0, -1
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total / 1000


def host_during(host: list, start: int, stop: int, top: int = 5) -> list[tuple[float, str]]:
    """What the CPU was inside while the GPU sat idle: the ops and runtime calls most overlapping the gap."""
    overlaps = [(min(e.end_ns(), stop) - max(e.start_ns(), start), e.name()) for e in host
                if e.start_ns() < stop and e.end_ns() > start and "ProfilerStep" not in e.name()]
    return [(ns / 1e6, name[:70]) for ns, name in sorted(overlaps, reverse=True)[:top]]


def profile(trainer, warmup: int, timed: int, profiled: int, cuda: bool) -> dict:
    """Train warm-up + timed + profiled steps; the profiler records only the last ones."""
    from torch.profiler import ProfilerActivity
    from transformers import TrainerCallback

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(activities=activities, record_shapes=True)
    clock = tt.StepClock(cuda)
    first, last = warmup + timed, warmup + timed + profiled

    class Window(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.mark()
            if state.global_step == first:
                prof.start()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == last:  # global_step counts the step just finished
                if cuda:
                    torch.cuda.synchronize()
                prof.stop()

    trainer.add_callback(Window())
    trainer.args.max_steps = last + 1
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    seconds = clock.seconds()[warmup:warmup + timed]
    kernels = [e for e in prof.profiler.kineto_results.events()
               if e.device_type() == torch.autograd.DeviceType.CUDA and not e.is_user_annotation()]
    kernels.sort(key=lambda e: e.start_ns())
    intervals = [(a, b, (b.start_ns() - a.end_ns()) / 1e6) for a, b in pairwise(kernels)]
    host = [e for e in prof.profiler.kineto_results.events() if e.device_type() == torch.autograd.DeviceType.CPU]
    gaps = [(ms, a.name()[:60], b.name()[:60], host_during(host, a.end_ns(), b.start_ns()))
            for a, b, ms in sorted(intervals, key=lambda g: -g[2])[:12]]
    window_us = (max(e.end_ns() for e in kernels) - min(e.start_ns() for e in kernels)) / 1000 if kernels else 0.0
    by_family: dict[str, float] = {}
    by_kernel: dict[str, list[float]] = {}
    for e in kernels:
        us = e.duration_ns() / 1000
        by_family[family(e.name())] = by_family.get(family(e.name()), 0.0) + us
        by_kernel.setdefault(e.name(), []).append(us)
    heaviest = sorted(by_kernel.items(), key=lambda kv: -sum(kv[1]))[:30]
    ops = prof.key_averages(group_by_input_shape=True)
    sort_key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return {
        "s_per_step": statistics.median(seconds) if seconds else 0.0, "wall_s": time.perf_counter() - started,
        "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "window_ms": window_us / 1000, "busy_ms": busy_us([(e.start_ns(), e.end_ns()) for e in kernels]) / 1000,
        "kernel_ms": sum(e.duration_ns() for e in kernels) / 1e6, "launches": len(kernels), "profiled_steps": profiled,
        "families_ms": {k: v / 1000 for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])},
        "heaviest": [(name[:110], len(us), sum(us) / 1000) for name, us in heaviest],
        "gaps": gaps, "gaps_over_100us_ms": sum(ms for *_, ms in intervals if ms > 0.1),
        "ops_table": ops.table(sort_by=sort_key, row_limit=40, max_name_column_width=60, max_shapes_column_width=70),
        "host_table": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60),
    }


def worker(args) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    name, batch, overrides, *flags = args.worker.split("|")
    shape = tt.TINY if args.tiny else tt.LLAMA31_8B
    data = tt.synthetic_items(tt.DATASET_ITEMS, shape["vocab_size"])
    trainer, own = tt.pricer_trainer(args.model_dir, data, overrides.split(), args, causal="mask" not in flags)
    if "cudnn" in flags:  # cuDNN's attention back on, to compare
        torch.backends.cuda.enable_cudnn_sdp(True)
    from pricer import batch_size

    batch_size.set_batch_size(trainer, int(batch))
    cuda = own["accelerator"] == "cuda"
    result = profile(trainer, args.warmup, args.steps, 2, cuda)
    with args.results.open("a") as f:
        f.write(json.dumps({"name": name, "batch": int(batch), "overrides": overrides, **result}) + "\n")
    print(result["ops_table"], result["host_table"], sep="\n", flush=True)


def summary(row: dict) -> str:
    steps = row["profiled_steps"]
    lines = [f"== {row['name']} (batch {row['batch']}: {row['overrides']}): {row['s_per_step']:.3f} s/step timed, "
             f"peak {row['peak_alloc_gib']:.1f} GiB; profiled {steps} steps: window {row['window_ms'] / steps:.0f} ms/step, "
             f"GPU busy {row['busy_ms'] / steps:.0f} ms/step ({100 * row['busy_ms'] / max(row['window_ms'], 1e-9):.0f} %), "
             f"{row['launches'] // steps} kernels/step"]
    lines += [f"   {fam:<26} {ms / steps:8.1f} ms/step  {100 * ms / row['kernel_ms']:5.1f} %"
              for fam, ms in row["families_ms"].items()]
    lines += [f"   {ms / steps:8.1f} ms/step {count // steps:5d}x  {name}" for name, count, ms in row["heaviest"]]
    lines += [f"   idle in gaps over 0.1 ms: {row['gaps_over_100us_ms'] / steps:.0f} ms/step; the longest:"]
    for ms, before, after, *during in row["gaps"]:
        lines.append(f"   {ms:7.2f} ms after {before} / before {after}")
        lines += [f"            host in {name} ({overlap:.2f} ms)" for overlap, name in (during[0] if during else [])]
    return "\n".join(lines)


def main(args) -> None:
    start = time.perf_counter()
    model_dir = tt.ensure_weights(args.tiny)
    print(f"weights in {model_dir} after {time.perf_counter() - start:.0f} s", flush=True)
    results = args.out / "profile_step.jsonl"
    results.unlink(missing_ok=True)
    for spec in args.run:
        left = args.budget_s - (time.perf_counter() - start)
        if left < 30:
            print(f"== {spec}: skipped, out of time", flush=True)
            continue
        tt.run_config(spec, args, model_dir, results, min(args.cap_s, left), script=__file__,
                      log=args.out / f"profile_{spec.split('|')[0]}.log")
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    for row in rows:
        print(summary(row), flush=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", default=[],
                        help='"name|batch|override override ...[|mask][|cudnn]": mask keeps the padding mask, cudnn its SDPA')
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cap-s", type=float, default=150)
    parser.add_argument("--budget-s", type=float, default=520)
    tt.add_process_arguments(parser)
    return parser.parse_args()


if __name__ == "__main__":
    tt.run_as_parent_or_worker(parse(), main, worker)
