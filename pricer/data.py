"""Load the pricer items and split each into prompt and completion at `Price is $`.

The notebook trained with a completion-only collator keyed on "Price is $"; TRL 1.x
does the same for a prompt/completion dataset, so the split happens here, once, and
the loss falls only on the price tokens.
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pricer.interrupt import Interrupted

PROMPT_END = "Price is $"
PROMPT_TAIL = "\n\nPrice is $"  # what a cut prompt keeps at its end, in training as in evaluation (pricer.predict)
CUT_MARGIN = 2  # tokens left free: the two decoded pieces of a cut prompt may tokenize a token longer when rejoined
MAX_PRICE = 1e9  # no product costs more; a larger value is a unit or parsing slip that would swamp every mean


log = logging.getLogger("pricer")


class DataError(ValueError):
    """A dataset row that cannot be used, named by split and index."""


@dataclass(frozen=True)
class Items:
    """Items to score: prompts cut at `Price is $` and their true prices."""

    prompts: list[str]
    prices: list[float]


@dataclass(frozen=True)
class Slices:
    """Every slice of one run's data. `val` is held out of the train split (the same items for every
    trial of a sweep, never trained on) so a sweep can select on it; `test` is the course's report."""

    train: Any  # a datasets.Dataset of prompt/completion rows, what TRL trains on
    train_prices: list[float]  # the constant baseline guesses their mean (the whole train split's)
    val: Items | None
    test: Items


def load_slices(path: str, data_files: dict[str, str] | None, revision: str | None, max_train_samples: int | None,
                test_items: int, val_items: int | None) -> Slices:
    """The train, validation and test slices; `val_items=None` trains on the whole train split."""
    splits = load_splits(path, data_files, revision, max_train_samples)
    train = splits["train"]
    train_prices = [float(p) for p in train["price"]]  # the whole split, validation items included
    val = None
    if val_items is not None:  # held out from the train split's end
        if val_items >= len(train):
            raise DataError(f"evaluation.val_items={val_items} leaves no training items of the {len(train)} in the "
                            f"train split: use fewer, e.g. evaluation.val_items={len(train) // 10}")
        cut = len(train) - val_items
        val = first_items(train.select(range(cut, len(train))), val_items)
        train = train.select(range(cut))
    test = first_items(splits["test"], test_items)
    log.info("data: %d train / %d validation / %d test items scored from %s", len(train),
             len(val.prompts) if val else 0, len(test.prompts), path)
    return Slices(to_prompt_completion(train), train_prices, val, test)


def first_items(split, items: int) -> Items:
    """The first `items` rows of a split as prompts (cut at `Price is $`) and prices."""
    head = split.select(range(min(items, len(split))))
    return Items([split_prompt_completion(text)["prompt"] for text in head["text"]], [float(p) for p in head["price"]])


def load_splits(
    path: str, data_files: dict[str, str] | None, revision: str | None, max_train_samples: int | None
):
    """`path` is a Hub dataset id or a local format (json, parquet, csv) with `data_files`."""
    from datasets import DatasetDict, load_dataset

    if data_files:  # one file set at a time, so a broken file is named by its split
        splits = DatasetDict({name: _load_files(load_dataset, path, name, files) for name, files in data_files.items()})
    else:
        splits = _load_hub(load_dataset, path, revision)
    for split in ("train", "test"):
        if split not in splits:
            raise DataError(f"data: no '{split}' split in {path} (found {list(splits)}): set data.data_files.{split}")
    if max_train_samples is not None:
        splits["train"] = splits["train"].select(range(min(max_train_samples, len(splits["train"]))))
    for split, dataset in splits.items():
        columns = dataset.column_names
        try:
            check_items(columns, dataset["text"] if "text" in columns else [], dataset["price"] if "price" in columns else [],
                        split)
        except UnicodeDecodeError as err:  # pyarrow's JSON and CSV readers pass bytes through; reading them fails
            source = f"data.data_files.{split}={data_files[split]}" if data_files else f"data.path={path} ({split} split)"
            raise DataError(f"{source} is not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset "
                            f"{err.start} of a value): save it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    return splits


def _load_hub(load_dataset, path: str, revision: str | None):
    """A Hub dataset (or a local dataset folder), or one line that says why it cannot be had."""
    from huggingface_hub import constants

    try:
        return load_dataset(path, revision=revision)
    except Interrupted:
        raise
    except Exception as err:  # ConnectionError offline, DatasetNotFoundError, FileNotFoundError, ...
        reason = (str(err).strip().splitlines() or [""])[0][:160]
        fix = ("unset HF_HUB_OFFLINE to download it, or point data.path at local files (data=local)"
               if constants.HF_HUB_OFFLINE else "check the dataset id and the network, or use local files (data=local)")
        raise DataError(f"data.path={path}{'@' + revision if revision else ''} cannot be loaded ({type(err).__name__}"
                        f"{': ' + reason if reason else ''}): {fix}") from None


def _load_files(load_dataset, path: str, split: str, files: str | list[str]):
    """One split from local files, or one line that names the file and what is wrong with it."""
    for file in [files] if isinstance(files, str) else list(files):
        if "://" in file or any(ch in file for ch in "*?["):
            continue  # a URL or a glob: the library resolves it
        if Path(file).is_dir():
            raise DataError(f"data.data_files.{split}={file} is a directory: name a file in it, or its files as a glob "
                            f"(data.data_files.{split}='{file.rstrip('/')}/*.jsonl')")
        if not Path(file).is_file():
            raise DataError(f"data.data_files.{split}={file}: no such file: check the path")
        if Path(file).stat().st_size == 0:
            raise DataError(f"data.data_files.{split}={file} is empty: it needs rows with text and price")
    try:
        return load_dataset(path, data_files={split: files}, split=split)
    except Interrupted:
        raise  # a signal while reading: the run stops as signalled, not as bad data
    except Exception as err:  # the readers raise many types: ArrowInvalid, JSONDecodeError, DatasetGenerationError
        reason = (str(err).strip().splitlines() or [""])[0][:160]
        raise DataError(f"data.data_files.{split}={files} cannot be read as data.path={path} ({type(err).__name__}"
                        f"{': ' + reason if reason else ''}): check that data.path names the files' format "
                        "(json for .jsonl, parquet, csv)") from None


def check_items(columns: list[str], texts: list[Any], prices: list[Any], split: str) -> None:
    """Fail on the first unusable row with its index, before any model is loaded."""
    for column in ("text", "price"):
        if column not in columns:
            raise DataError(f"data: the {split} split has no '{column}' column (found {columns}): rename your columns")
    for index, (text, price) in enumerate(zip(texts, prices, strict=True)):
        if isinstance(price, bool) or not isinstance(price, (int, float)):
            raise DataError(f"data: {split} row {index} has a non-numeric price {price!r}: prices must be numbers")
        if not price >= 0:
            raise DataError(f"data: {split} row {index} has a negative or NaN price {price}: prices must be >= 0")
        if not math.isfinite(price) or price > MAX_PRICE:
            raise DataError(f"data: {split} row {index} has a price of {price}: prices must be finite and at most "
                            f"{MAX_PRICE:.0e} (cents instead of dollars?)")
        if not isinstance(text, str) or PROMPT_END not in text:
            raise DataError(f"data: {split} row {index} has no '{PROMPT_END}' in its text: each item must end with it")


def split_prompt_completion(text: str) -> dict[str, str]:
    """'...Price is $24.00' -> prompt '...Price is $', completion '24.00'."""
    cut = text.rindex(PROMPT_END) + len(PROMPT_END)
    return {"prompt": text[:cut], "completion": text[cut:]}


def to_prompt_completion(dataset):
    """The training split as TRL's prompt/completion columns."""
    return dataset.map(
        lambda item: split_prompt_completion(item["text"]),
        remove_columns=dataset.column_names,
        desc="prompt/completion",
    )


def fit_to_length(dataset, tokenizer, max_length: int):
    """Training rows cut as evaluation cuts its prompts: the prompt's start and its last tokens ("Price is $")
    kept, the middle dropped, so prompt, price and EOS fit `max_length`.

    TRL cuts a row longer than max_length at its end, so a long item lost its price and trained on nothing,
    while evaluation (pricer.predict.cut_to_length) kept "Price is $" and asked for a price. Rows that fit
    are left as they are; how many were cut is logged."""
    tail = len(tokenizer(PROMPT_TAIL, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token or ""

    def cut(batch: dict[str, list]) -> dict[str, list]:
        prompts = tokenizer(batch["prompt"])["input_ids"]
        whole = tokenizer([p + c + eos for p, c in zip(batch["prompt"], batch["completion"], strict=True)])["input_ids"]
        out, was_cut = [], []
        for text, prompt_ids, all_ids in zip(batch["prompt"], prompts, whole, strict=True):
            if len(all_ids) <= max_length:
                out.append(text)
                was_cut.append(False)
                continue
            completion = len(all_ids) - len(prompt_ids)
            keep = max(max_length - completion - tail - CUT_MARGIN, 1)
            out.append(tokenizer.decode(prompt_ids[:keep], skip_special_tokens=True)
                       + tokenizer.decode(prompt_ids[-tail:], skip_special_tokens=True))
            was_cut.append(True)
        return {"prompt": out, "cut": was_cut}

    mapped = dataset.map(cut, batched=True, desc="cut to max_length")
    n_cut = sum(mapped["cut"])
    if n_cut:
        log.info("data: %d of %d training rows were longer than training.max_length=%d tokens: their prompts cut in the "
                 "middle as evaluation cuts them (start and \"Price is $\" kept), so none loses its price", n_cut,
                 len(mapped), max_length)
    return mapped.remove_columns("cut")
