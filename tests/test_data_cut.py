"""Training and evaluation cut long items the same way: the prompt's start and "Price is $" survive in both.

TRL cuts a row longer than training.max_length at its end: a long item lost its price and,
with the loss on the completion only, had nothing to learn (TRL 1.x then drops it), while evaluation kept the prompt's
start and "Price is $" (pricer.predict.cut_to_length). pricer.data.fit_to_length cuts training
prompts as evaluation does. Checked through TRL's own SFTTrainer tokenization, and through
the real command (the training log says how many rows were cut).
"""

import json
from pathlib import Path

import pytest
from conftest import run_cli

from pricer import PACKAGE_DIR
from pricer.data import PROMPT_END, fit_to_length, to_prompt_completion

MAX_LENGTH = 48
LONG = "How much does this cost to the nearest dollar?\n\n" + " ".join(str(i % 900) for i in range(400)) + "\n\nPrice is $123.00"
SHORT = "How much does this cost to the nearest dollar?\n\nA small item\n\nPrice is $7.00"


def trl_rows(tiny_model_dir: Path, dataset, tmp_path: Path) -> list[dict]:
    """The rows as TRL's SFTTrainer prepares them (tokenized, cut at max_length, labels from the completion mask)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = SFTConfig(output_dir=str(tmp_path), max_length=MAX_LENGTH, completion_only_loss=True, use_cpu=True,
                     report_to=[], dataset_num_proc=None)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    collated = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    return [{"input_ids": ids[mask.bool()].tolist(), "labels": [x for x in labels.tolist() if x != -100]}
            for ids, mask, labels in zip(collated["input_ids"], collated["attention_mask"], collated["labels"], strict=True)]


def test_a_long_training_row_keeps_its_price(tiny_model_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = to_prompt_completion(Dataset.from_dict({"text": [LONG, SHORT], "price": [123.0, 7.0]}))
    uncut = trl_rows(tiny_model_dir, rows, tmp_path / "uncut")
    assert [tokenizer.decode(r["labels"], skip_special_tokens=True) for r in uncut] == ["7.00"], \
        "cut at its end by TRL, the long row lost its price: nothing left to learn, TRL drops it"

    cut = fit_to_length(rows, tokenizer, MAX_LENGTH)
    assert cut[1] == rows[1], "a row that fits is left alone"
    assert cut[0]["completion"] == "123.00" and cut[0]["prompt"].endswith(PROMPT_END)
    assert cut[0]["prompt"].startswith("How much does this cost to the nearest dollar?")
    long, short = trl_rows(tiny_model_dir, cut, tmp_path / "cut")
    assert len(long["input_ids"]) <= MAX_LENGTH
    assert tokenizer.decode(long["labels"], skip_special_tokens=True) == "123.00", "it trains on its price"
    assert tokenizer.decode(short["labels"], skip_special_tokens=True) == "7.00"


@pytest.mark.slow  # trains
def test_training_logs_how_many_rows_were_cut(tmp_path: Path) -> None:
    """The real command on data where a few training items are longer than max_length."""
    items = [json.loads(line) for line in (PACKAGE_DIR / "sample_data" / "train.jsonl").read_text().splitlines()[:60]]
    for item in items[:3]:
        item["text"] = LONG.replace("123.00", f"{item['price']:.2f}")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(item) + "\n" for item in items))
    out = run_cli(["experiment=demo", f"data.data_files.train={train}", "training.max_steps=2", "training.save_steps=2",
                   "training.max_length=128", "evaluation.test_items=10", f"output_root={tmp_path}"])  # the sample's items fit
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data: 3 of 60 training rows were longer than training.max_length=128 tokens" in out.stdout + out.stderr
