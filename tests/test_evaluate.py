"""evaluate_model, the CLI on a saved adapter, and the in-training callback, on the tiny model."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import BATCH_TOKENS, TOP_K

from pricer import PACKAGE_DIR
from pricer.evaluate import CHART_FILE, METRICS_FILE, evaluate_model, main, price_eval_callback
from pricer.metrics import price_metrics
from pricer.modeling import load_model, load_tokenizer
from pricer.predict import predict_prices

ITEMS = 40
CONFIG_OVERRIDES = ["model=tiny", "data=sample", "hardware=cpu", "quant=none", "optimizer=adamw_torch", "tracking=none"]


def _jsonl(name: str) -> list[dict]:
    with open(PACKAGE_DIR / "sample_data" / name) as f:
        return [json.loads(line) for line in f]


def _save_run_config(run_dir, tiny_path) -> None:
    """.hydra/config.yaml as a `model=tiny data=sample` run saves it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(PACKAGE_DIR.parent / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*CONFIG_OVERRIDES, f"model.pretrained_model_name_or_path={tiny_path}"])
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """A run dir as training leaves it: a LoRA adapter that changes the answers, tokenizer, config."""
    from peft import LoraConfig, get_peft_model

    train, test = _jsonl("train.jsonl"), _jsonl("test.jsonl")[:ITEMS]
    tiny_path = tiny_model_dir
    tokenizer = load_tokenizer(str(tiny_path), None, False)

    def load_base():
        return load_model(str(tiny_path), None, False, "sdpa", {}, "float32", "cpu", tokenizer.pad_token_id)

    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    model = get_peft_model(load_base(), lora)  # random A and B: the adapter moves every prediction
    run_dir = tmp_path_factory.mktemp("run")
    model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    _save_run_config(run_dir, tiny_path)
    return SimpleNamespace(
        dir=run_dir, model=model, tokenizer=tokenizer, load_base=load_base,
        prompts=[r["text"] for r in test], prices=[r["price"] for r in test], train_prices=[r["price"] for r in train],
    )


@pytest.fixture(scope="module")
def adapter_metrics(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return out, evaluate_model(run.model, run.tokenizer, run.prompts, run.prices, out, run.train_prices, TOP_K,
                               BATCH_TOKENS)


def test_evaluate_model_writes_metrics_and_chart(run, adapter_metrics):
    out, metrics = adapter_metrics
    assert json.loads((out / METRICS_FILE).read_text()) == metrics
    assert (out / CHART_FILE).read_bytes()[:4] == b"\x89PNG"
    guesses = predict_prices(run.model, run.tokenizer, run.prompts, TOP_K, BATCH_TOKENS)
    assert metrics["test/price_error"] == pytest.approx(price_metrics(guesses, run.prices)["price_error"])
    assert metrics["test/items"] == ITEMS
    mean = sum(run.train_prices) / len(run.train_prices)
    assert metrics["baseline/guess"] == pytest.approx(mean)
    assert metrics["baseline/price_error"] == pytest.approx(sum(abs(mean - p) for p in run.prices) / ITEMS)
    for key in ("rmsle", "hit_rate", "median_error"):
        assert f"test/{key}" in metrics and f"baseline/{key}" in metrics


def test_cli_on_a_run_dir_reproduces_evaluate_model(run, adapter_metrics, tmp_path, capsys):
    """`python -m pricer.evaluate RUN_DIR` in-process (a subprocess would add ~10 s of imports)."""
    _, expected = adapter_metrics
    main([str(run.dir), "-n", str(ITEMS), "--out", str(tmp_path)])
    got = json.loads((tmp_path / METRICS_FILE).read_text())
    assert got == pytest.approx(expected, rel=1e-6)
    assert f"Error=${expected['test/price_error']:,.2f} " in capsys.readouterr().out
    assert (tmp_path / CHART_FILE).exists()


def test_cli_without_adapter_scores_the_base_model(run, adapter_metrics, tmp_path):
    _, with_adapter = adapter_metrics
    got = main([str(run.dir), "--adapter", "none", "-n", str(ITEMS), "--out", str(tmp_path)])
    base = evaluate_model(run.load_base(), run.tokenizer, run.prompts, run.prices, tmp_path / "ref", None, TOP_K,
                          BATCH_TOKENS)
    assert got["test/price_error"] == pytest.approx(base["test/price_error"], rel=1e-6)
    assert got["test/price_error"] != pytest.approx(with_adapter["test/price_error"], rel=1e-3)


@pytest.mark.slow  # trains 2 steps
def test_callback_logs_price_metrics_while_training(run, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = run.load_base()
    ids = run.tokenizer(run.prompts[0])["input_ids"]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args, processing_class=run.tokenizer,
                      train_dataset=[{"input_ids": ids, "labels": ids}] * 4)
    prompts, prices = run.prompts[:8], run.prices[:8]
    trainer.add_callback(price_eval_callback(trainer, prompts, prices, 1, TOP_K, BATCH_TOKENS))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "eval_price_error" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]
    assert logged[0]["eval_price_error"] != logged[1]["eval_price_error"]  # the weights moved in between
    final = price_metrics(predict_prices(model, run.tokenizer, prompts, TOP_K, BATCH_TOKENS), prices)
    assert logged[-1]["eval_price_error"] == pytest.approx(final["price_error"], rel=1e-5)
    assert {"eval_rmsle", "eval_hit_rate", "eval_median_error"} <= set(logged[-1])
