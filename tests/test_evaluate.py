"""evaluate_model, the CLI on a saved adapter, and the in-training callback, on the tiny model."""

import json
import math
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


# The course's tester by hand on fixed guesses: error = |guess - truth|; green (a hit) under $40 or under
# 20 % of the truth, orange under $80 or 40 %, red otherwise.
#          truth,  guess,  error, colour
KNOWN = [(120.0,   100,    20.0, "green"),   # under $40
         (40.0,     60,    20.0, "green"),   # under $40, though 50 % of the truth
         (200.0,   250,    50.0, "orange"),  # 25 %, under $80
         (350.0,   500,   150.0, "red"),     # 42.9 %
         (10.0,     30,    20.0, "green"),   # under $40, though 200 %
         (1000.0,  850,   150.0, "green"),   # 15 %
         (99.5,      5,    94.5, "red"),     # 95 %
         (300.0,   359,    59.0, "green")]   # 19.7 %
TRAIN_PRICES = [100.0, 200.0, 300.0]  # the constant baseline guesses their mean, $200


def answering(model, tokenizer, prompts: list[str], guesses: list[int]):
    """The tiny model rewired so that its next token after prompt i is the price token guesses[i], with
    probability ~1: attention and MLP outputs zeroed, so the last hidden state is the last token's
    embedding, made one-hot in its own direction; the LM head maps that direction to the price token."""
    last = [ids[-1] for ids in tokenizer(prompts)["input_ids"]]
    assert len(set(last)) == len(prompts), "each prompt ends in its own token"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        for i, (token, guess) in enumerate(zip(last, guesses, strict=True)):
            model.model.embed_tokens.weight[token] = torch.nn.functional.one_hot(torch.tensor(i), model.config.hidden_size)
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(str(guess))] = 10 * model.model.embed_tokens.weight[token]
    return model


def test_evaluate_model_scores_known_guesses_as_the_course_does(run, tmp_path):
    """evaluate_model on a model whose answers are known (prompts of several lengths, batched and padded):
    every score is the course's tester's, worked out by hand above; metrics.json and the chart are written."""
    words = ["apple", "Price", "cost", "item", "brand", "size", "model", "colour"]
    prompts = [" ".join(["How much does this cost?"] * (1 + i % 3) + [word]) for i, word in enumerate(words)]
    truths, guesses = [k[0] for k in KNOWN], [k[1] for k in KNOWN]
    model = answering(run.load_base(), run.tokenizer, prompts, guesses)
    assert predict_prices(model, run.tokenizer, prompts, TOP_K, BATCH_TOKENS) == pytest.approx(guesses, abs=1e-3)

    metrics = evaluate_model(model, run.tokenizer, prompts, truths, tmp_path, TRAIN_PRICES, TOP_K, BATCH_TOKENS)
    rmsle = math.sqrt(sum((math.log(1 + g) - math.log(1 + t)) ** 2 for t, g in zip(truths, guesses, strict=True)) / 8)
    assert metrics == pytest.approx({
        "test/price_error": 563.5 / 8,  # 20 + 20 + 50 + 150 + 20 + 150 + 94.5 + 59
        "test/median_error": (50 + 59) / 2,  # the middle two of 20 20 20 50 59 94.5 150 150
        "test/rmsle": rmsle,
        "test/hit_rate": 5 / 8, "test/green": 5, "test/orange": 1, "test/red": 2, "test/items": 8,
        # always $200: errors 80 160 0 150 190 800 100.5 100; green 0, orange 100 on 300 (33 %), the rest red
        "baseline/guess": 200.0,
        "baseline/price_error": 1580.5 / 8,
        "baseline/median_error": (100.5 + 150) / 2,
        "baseline/rmsle": math.sqrt(sum((math.log(201) - math.log(1 + t)) ** 2 for t in truths) / 8),
        "baseline/hit_rate": 1 / 8, "baseline/green": 1, "baseline/orange": 1, "baseline/red": 6, "baseline/items": 8,
    }, abs=1e-4)
    assert json.loads((tmp_path / METRICS_FILE).read_text()) == metrics
    assert (tmp_path / CHART_FILE).read_bytes()[:4] == b"\x89PNG"


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


def test_an_adapter_saved_in_bf16_scores_as_its_run_did(run, tiny_model_dir, tmp_path):
    """On bf16 hardware TRL trains a 4-bit base's LoRA in bf16 and the run scores it so; peft's loader
    upcasts a bf16 adapter to fp32, and the re-score then ran LoRA at another precision (an 8B-shaped
    run re-scored on an H100 moved from $313.93 to $308.56). The loaded adapter keeps the saved dtype,
    and its logits are the in-memory model's, bit for bit."""
    from peft import LoraConfig, get_peft_model

    from pricer.modeling import load_for_run
    from pricer.schema import Model

    torch.manual_seed(1)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    trained = get_peft_model(run.load_base(), lora)
    for param in trained.parameters():
        if param.requires_grad:  # what TRL leaves in memory at the end of such a run
            param.data = param.data.to(torch.bfloat16)
    trained.save_pretrained(tmp_path)

    base = Model(pretrained_model_name_or_path=str(tiny_model_dir), revision=None, trust_remote_code=False,
                 attn_implementation="sdpa", build_tiny=False)
    _, loaded = load_for_run(base, {}, "float32", "cpu", False, adapter=str(tmp_path))
    adapter_dtypes = {p.dtype for name, p in loaded.named_parameters() if ".default." in name}
    assert adapter_dtypes == {torch.bfloat16}

    batch = run.tokenizer(run.prompts[:4], return_tensors="pt", padding=True)
    trained.eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, trained(**batch).logits)


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


@pytest.mark.slow  # wandb.init starts W&B's local service process
def test_cli_logs_its_scores_as_a_wandb_run_of_job_type_evaluate(run, tmp_path):
    """The runs table tells a re-scoring from training: job_type evaluate, the scores in its summary."""
    from test_compare_links import wandb_run

    got = main([str(run.dir), "-n", "8", "--out", str(tmp_path), "--tracking", "wandb"])
    logged = wandb_run(tmp_path)
    assert logged["job_type"] == "evaluate" and logged["name"] == f"{run.dir.name}-eval"
    assert logged["config"]["source"] == str(run.dir) and logged["config"]["items"] == 8
    assert logged["summary"]["test/price_error"] == pytest.approx(got["test/price_error"])
