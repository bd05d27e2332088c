"""Each bad input gives one line naming the key and the fix, before any download."""

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import compose_train, run_cli_in_process

from pricer.config import validate
from pricer.config_errors import ConfigError
from pricer.data import DataError, load_splits

DEMO = ["experiment=demo"]
BAD_CONFIGS = [
    ([], "hardware=a100_notebook needs a CUDA GPU"),  # the notebook's default on a machine without one
    (["hardware=h100"], "hardware=h100 needs a CUDA GPU"),
    (["hardware=t4", "hardware.bf16=true", "hardware.fp16=false"], "hardware=t4 has no bf16"),
    (["hardware=t4", "hardware.compute_dtype=bfloat16"], "hardware=t4 has no bf16"),
    ([*DEMO, "lora.r=0"], "lora.r=0 must be a positive integer"),
    ([*DEMO, "lora.r=-8"], "lora.r=-8 must be a positive integer"),
    ([*DEMO, "lora.lora_dropout=1.0"], "lora.lora_dropout=1.0 must lie in [0, 1)"),
    ([*DEMO, "lora.lora_dropout=-0.1"], "lora.lora_dropout=-0.1 must lie in [0, 1)"),
    ([*DEMO, "optimizer.optim=adamw_troch"], "optimizer.optim=adamw_troch is not a known optimizer (did you mean adamw_torch?)"),
    ([*DEMO, "scheduler.lr_scheduler_type=cosine_warm"], "scheduler.lr_scheduler_type=cosine_warm is not a known scheduler"),
    ([*DEMO, "optimizer=paged_adamw_32bit"], "optimizer.optim=paged_adamw_32bit pages through CUDA memory"),
    ([*DEMO, "optimizer.learning_rate=0"], "optimizer.learning_rate=0 must be > 0"),
    ([*DEMO, "+lora.rank=8"], "lora.rank is not a known key"),
    ([*DEMO, "+training.max_seq_length=182"], "training.max_seq_length is not a known key (did you mean training.max_length?)"),
    ([*DEMO, "+quant.load_in_8bit=true"], "quant sets both load_in_4bit and load_in_8bit"),
    ([*DEMO, "hardware.fp16=true"], "hardware=cpu trains in fp32"),
    ([*DEMO, "hub.push=true"], "hub.push=true needs a Hugging Face token"),
    ([*DEMO, "optimized_metric=accuracy"], "optimized_metric=accuracy is not one of"),
    ([*DEMO, "data=local"], "data.data_files.train is missing: add it to the config or pass data.data_files.train="),
    ([*DEMO, "+optimizer.lr=0.1"], "optimizer.lr is not a known key"),
    ([*DEMO, "+model.trust_remote=true"], "model.trust_remote is not a known key (did you mean model.trust_remote_code?)"),
    ([*DEMO, "+lerning_rate=0.1"], "lerning_rate is not a known key"),
    ([*DEMO, "hub.hub_strategy=sometimes"], "hub.hub_strategy=sometimes is not one of every_save, end"),
    ([*DEMO, "hub.private=maybe"], "hub.private='maybe' must be true or false"),
    ([*DEMO, "hub.push_attempts=two"], "hub.push_attempts='two' must be an integer"),
    ([*DEMO, "hardware.dataloader_num_workers=two"], "hardware.dataloader_num_workers='two' must be an integer"),
    ([*DEMO, "hardware.per_device_train_batch_size=0"], "per_device_train_batch_size=0 must be a positive integer"),
    ([*DEMO, "hardware.compute_dtype=float8"], "hardware.compute_dtype=float8 is not one of"),
    ([*DEMO, "tracking=wandb", "tracking.backend=mlflow"], "tracking.backend=mlflow is not one of wandb, none"),
    ([*DEMO, "data.max_train_samples=0"], "data.max_train_samples=0 must be a positive integer or null"),
    ([*DEMO, "training.max_length=-1"], "max_length=-1 must be a positive integer"),
    ([*DEMO, "model.revision=[main]"], "model.revision=['main'] must be a string or null"),
    # checked against the library's own field annotations (LoraConfig, SFTConfig) or object (BitsAndBytesConfig)
    ([*DEMO, "optimizer.learning_rate=fast"], "optimizer.learning_rate='fast' must be a number"),
    ([*DEMO, "scheduler.warmup_steps=abc"], "scheduler.warmup_steps='abc' must be a number"),
    ([*DEMO, "optimizer.max_grad_norm=big"], "optimizer.max_grad_norm='big' must be a number"),
    ([*DEMO, "optimizer.weight_decay=[0.1]"], "optimizer.weight_decay=[0.1] must be a number"),
    ([*DEMO, "training.num_train_epochs=many"], "training.num_train_epochs='many' must be a number"),
    ([*DEMO, "training.logging_steps=0"], "training.logging_steps=0 must be positive"),
    ([*DEMO, "training.save_steps=-5"], "training.save_steps=-5 must be positive"),
    ([*DEMO, "training.max_steps=0"], "train nothing"),
    ([*DEMO, "training.num_train_epochs=0"], "train nothing"),
    ([*DEMO, "training.num_train_epochs=-1"], "training.num_train_epochs=-1 must be >= 0"),
    ([*DEMO, "training.max_steps=ten"], "training.max_steps='ten' must be an integer"),
    ([*DEMO, "training.max_length=8"], "training.max_length=8 is shorter than the prompt's fixed words"),
    ([*DEMO, "quant.bnb_4bit_quant_type=nf5"], "quant.bnb_4bit_quant_type=nf5 is not one of nf4, fp4"),
    ([*DEMO, "quant.load_in_4bit=yes"], "quant: load_in_4bit must be a boolean"),
    ([*DEMO, "lora.bias=sometimes"], "lora.bias=sometimes is not one of none, all, lora_only"),
    ([*DEMO, "lora.target_modules=[]"], "lora.target_modules is empty"),
    ([*DEMO, "lora.r=2.5"], "lora.r=2.5 must be an integer"),
    ([*DEMO, "+lora.use_rslora=maybe"], "lora.use_rslora='maybe' must be true or false"),
    ([*DEMO, "hardware.memory_gib=-4"], "hardware.memory_gib=-4.0 must be positive"),
    ([*DEMO, "hardware.gradient_checkpointing=often"], "hardware.gradient_checkpointing='often' must be true or false"),
    ([*DEMO, "optimized_metric=val/price_eror"], "optimized_metric=val/price_eror is not one of"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS, ids=[" ".join(o) or "defaults" for o, _ in BAD_CONFIGS])
def test_bad_config_is_one_clear_line(overrides: list[str], message: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The real command, `python -m pricer.train ...` (runpy runs the module as __main__ as -m does), in
    this process to keep the table quick: exit code 2, one `error:` line naming the key, no model
    loaded, no run dir left."""
    import runpy

    import transformers

    loads, original = [], transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *args, **kwargs: loads.append(args) or original(*args, **kwargs))
    monkeypatch.setattr(sys, "argv", ["pricer.train", *overrides, f"output_root={tmp_path}"])
    monkeypatch.delitem(sys.modules, "pricer.train", raising=False)  # imported by an earlier test: -m runs a fresh copy
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("pricer.train", run_name="__main__", alter_sys=True)
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], errors
    assert not loads, "refused before any model load"
    assert not list(tmp_path.glob("runs/*")), "no run dir left behind"
    with pytest.raises(ConfigError, match=re.escape(message)):  # composing (the schema) and validating say the same
        cfg, choices = compose_train(overrides)
        validate(cfg, choices)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


GOOD = {"text": "How much?\n\nA lamp\n\nPrice is $12.00", "price": 12.0}
BAD_DATA = [
    ([{"title": "x", "price": 1.0}], "the train split has no 'text' column"),
    ([{"text": GOOD["text"], "cost": 1.0}], "the train split has no 'price' column"),
    ([GOOD, {"text": GOOD["text"], "price": "twelve"}], "train row 1 has a non-numeric price 'twelve'"),
    ([GOOD, GOOD, {"text": GOOD["text"], "price": -3.0}], "train row 2 has a negative or NaN price -3.0"),
    ([{"text": "A lamp that costs 12 dollars", "price": 12.0}], "train row 0 has no 'Price is $' in its text"),
    ([GOOD, {"text": GOOD["text"], "price": 1e30}], "train row 1 has a price of 1e+30: prices must be finite"),
    ([GOOD, {"text": GOOD["text"], "price": float("inf")}], "train row 1 has a price of inf: prices must be finite"),
]


BAD_FILES = [
    ("json", None, "no such file: check the path"),
    ("json", b"", "is empty: it needs rows with text and price"),
    ("json", b"not json at all\n", "cannot be read as data.path=json"),
    ("parquet", b'{"text": "x Price is $1.00", "price": 1.0}\n', "cannot be read as data.path=parquet"),
]


@pytest.mark.parametrize(("path", "content", "message"), BAD_FILES, ids=["missing", "empty", "not json", "jsonl as parquet"])
def test_bad_data_file_is_named_in_one_line(tmp_path: Path, path: str, content: bytes | None, message: str) -> None:
    train = tmp_path / "train.jsonl"
    if content is not None:
        train.write_bytes(content)
    files = {"train": str(train), "test": write_jsonl(tmp_path / "test.jsonl", [GOOD])}
    with pytest.raises(DataError) as err:
        load_splits(path, files, None, None)
    assert message in str(err.value) and "\n" not in str(err.value) and str(train) in str(err.value)


@pytest.mark.parametrize(("rows", "message"), BAD_DATA, ids=[m.split(" has ")[-1][:30] for _, m in BAD_DATA])
def test_bad_dataset_names_the_row(tmp_path: Path, rows: list[dict], message: str) -> None:
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows), "test": write_jsonl(tmp_path / "test.jsonl", [GOOD])}
    with pytest.raises(DataError) as err:
        load_splits("json", files, None, None)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_resume_of_a_dir_that_is_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = run_cli_in_process([*DEMO, f"resume={tmp_path}", f"hydra.run.dir={tmp_path}/run", f"output_root={tmp_path}"],
                             monkeypatch, capsys)
    assert out.returncode == 2
    assert f"error: resume={tmp_path} is not a pricer run dir (no run.json)" in out.stderr


def test_cli_exits_with_one_line_before_loading_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """The real command in this process (run_cli_in_process): exit code 2, its one error line, no run."""
    out = run_cli_in_process([*DEMO, "lora.lora_dropout=1.5", f"hydra.run.dir={tmp_path}/run", f"output_root={tmp_path}"],
                             monkeypatch, capsys)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: lora.lora_dropout=1.5 must lie in [0, 1): use e.g. lora.lora_dropout=0.1"]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "adapter").exists()
