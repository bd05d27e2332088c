"""Training end to end on the tiny model: it learns, it pushes, it tracks, it leaks nothing."""

import json
import re
from pathlib import Path

import pytest
import torch
from bitsandbytes.functional import dequantize_4bit
from bitsandbytes.nn import Linear4bit
from conftest import SMOKE, compose_train, run_cli
from safetensors.torch import load_file

from pricer import PACKAGE_DIR
from pricer.config import validate
from pricer.data import load_slices
from pricer.evaluate import score_slices
from pricer.fit import CheckpointKeeper, StopOnSignal, fit
from pricer.frozen4bit import lean_forward
from pricer.modeling import load_for_run
from pricer.resume import write_run

FAKE_WANDB_KEY = "wandbsecret0123456789abcdef0123456789abcd"


def dequantized(packed: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The 4-bit weights as a forward sees them, whatever layout bitsandbytes stores them in."""
    return {name: dequantize_4bit(param.data, param.quant_state) for name, param in packed.items()}


@pytest.mark.slow
def test_qlora_trains_adapter_and_keeps_4bit_base(tmp_path: Path, cpu_kind: str) -> None:
    """In process, as on a CPU with or without AVX512-BF16: LoRA weights move, the 4-bit base weights do
    not (before training, after validation scoring mid-training, after the final evaluation), the loss
    falls; with hardware.lean_4bit=true (opt in) every 4-bit linear trains through pricer.frozen4bit."""
    cfg, choices = compose_train([*SMOKE, "hardware.lean_4bit=true", "evaluation.eval_steps=10"])
    run = validate(cfg, choices)
    hardware = run.hardware
    tokenizer, model = load_for_run(run.model, run.quant, hardware.compute_dtype, hardware.accelerator, hardware.liger)
    packed = {name: p for name, p in model.named_parameters() if p.dtype == torch.uint8}
    assert len(packed) == 4 * 7, "every linear layer of the 4 decoder layers is nf4"
    before = dequantized(packed)

    data, evaluation = run.data, run.evaluation
    slices = load_slices(data.path, data.data_files, data.revision, data.max_train_samples,
                         evaluation.test_items, evaluation.val_items)
    write_run(tmp_path, status="running")  # what the run's claim writes first
    keeper = CheckpointKeeper.for_run(tmp_path, None, run.hub, run.sft["save_total_limit"])
    with StopOnSignal() as stopper:
        model, metrics = fit(model, tokenizer, slices.train, slices.val, run_dir=tmp_path, run_name="pricer-test",
                             sft=run.sft, lora=run.lora, seed=run.seed, hardware=hardware, evaluation=evaluation,
                             report_to=[], keeper=keeper, stopper=stopper, lean_4bit=True, auto_batch_size=False)
        scores = score_slices(model, tokenizer, slices, tmp_path / "adapter", evaluation.top_k,
                              evaluation.batch_tokens, run.sft["max_length"], "pricer-test")
    assert {"test/price_error", "val/price_error", "baseline/price_error"} <= set(scores)

    for name, weight in dequantized(packed).items():  # the same Params4bit objects, now inside peft's layers
        assert torch.equal(weight, before[name]), name
    assert not any(p.requires_grad for p in packed.values())
    assert sum(isinstance(m, Linear4bit) and m.weight is packed[n] for n in packed for m in model.modules()) == 28
    lean = [m for m in model.modules() if hasattr(m, "lean_absmax")]
    assert len(lean) == len(packed) and all(m.forward.__func__ is lean_forward for m in lean)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "lora_B starts at zero and must have moved"
    assert metrics["last_logged_loss"] < 0.5 * metrics["first_logged_loss"]
    assert metrics["train_steps"] == 30


@pytest.mark.slow
def test_cli_run_trains_pushes_tracks_and_leaks_no_secret(tmp_path: Path, hub_stand_in, tiny_model_dir) -> None:
    run_dir = tmp_path / "run"
    out = run_cli(
        [*SMOKE, "hub.push=true", "tracking=wandb", f"hydra.run.dir={run_dir}", f"output_root={tmp_path}"],
        env={"WANDB_API_KEY": FAKE_WANDB_KEY, "HF_HUB_OFFLINE": "0"},
    )
    assert out.returncode == 0, out.stderr[-3000:]

    # Learning: the adapter moved away from its init and the logged loss fell.
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert all(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)
    base_head = load_file(tiny_model_dir / "model.safetensors")["lm_head.weight"]
    trained_head = next(t for name, t in adapter.items() if "lm_head" in name)
    assert not torch.allclose(base_head, trained_head)
    state = json.loads((run_dir / "checkpoints" / "checkpoint-30" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0]

    # Evaluation: the course's metrics beside the constant-mean baseline, and the chart.
    metrics = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    assert metrics["test/items"] == 250 and metrics["baseline/items"] == 250
    assert metrics["test/green"] + metrics["test/orange"] + metrics["test/red"] == 250
    assert metrics["test/hit_rate"] == metrics["test/green"] / 250  # a hit is a green guess
    with open(PACKAGE_DIR / "sample_data" / "test.jsonl") as f:  # the baseline's error, worked out here
        truths = [json.loads(line)["price"] for line in f][:250]
    expected = sum(abs(metrics["baseline/guess"] - truth) for truth in truths) / 250
    assert metrics["baseline/price_error"] == pytest.approx(expected)
    assert (run_dir / "adapter" / "price_chart.png").stat().st_size > 10_000
    from pricer.evaluate import main as evaluate_cli  # the run dir alone is enough to score it again

    again = evaluate_cli([str(run_dir), "--out", str(tmp_path / "eval")])
    for key in ("test/price_error", "test/rmsle", "test/hit_rate", "baseline/price_error"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-4), key

    # Hub: one private repo named pricer-{timestamp}, every save pushed, then the final files.
    (repo_id,) = hub_stand_in.repos
    assert re.fullmatch(r"pricer-tester/pricer-\d{4}-\d\d-\d\d_\d\d\.\d\d\.\d\d(_\d+)?", repo_id)
    repo = hub_stand_in.repos[repo_id]
    assert repo.private
    messages = [commit.message for commit in repo.commits]
    assert sum("Training in progress" in m for m in messages) == 2, messages  # steps 15 and 30
    assert messages[-1] == "final adapter, tokenizer and model card"
    files = hub_stand_in.files(repo_id)
    assert files["adapter_model.safetensors"] == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert {"adapter_config.json", "tokenizer.json", "README.md", "metrics.json", "config.yaml", "price_chart.png"} <= set(files)
    assert not [path for path in files if path.startswith(("checkpoint-", "wandb", ".hydra")) or path.endswith(".log")]
    card = files["README.md"].decode()
    assert "base_model:" in card and "tiny-llama" in card and "test/price_error" in card and "lora_dropout" in card
    # The pushed repo alone scores the same: its config, and the adapter that peft (and the dtype check) fetch over HTTP.
    from_hub = evaluate_cli([repo_id, "--out", str(tmp_path / "eval-hub")])
    for key in ("test/price_error", "test/rmsle", "test/hit_rate", "baseline/price_error"):
        assert from_hub[key] == pytest.approx(metrics[key], rel=1e-4), key

    # W&B (offline): one run, named after the project run, holding the resolved config
    # (the .wandb file is W&B's protobuf record log: the config values appear in it verbatim).
    (wandb_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_file.read_bytes()
    project_run = repo_id.split("/")[1]
    assert project_run.encode() in records and b"lora_dropout" in records and repo_id.encode() in records

    # No secret anywhere: not in any file the run wrote, not in its output.
    for secret in (hub_stand_in.token, FAKE_WANDB_KEY):
        assert secret not in out.stdout + out.stderr
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
        for path, content in files.items():
            assert secret.encode() not in content, path
