"""Batched prediction on the tiny model: same answers as one prompt at a time."""

import json
import math

import pytest
import torch
from conftest import BATCH_TOKENS, TOP_K

from pricer import PACKAGE_DIR
from pricer.modeling import load_model, load_tokenizer
from pricer.predict import (
    NO_ANSWER,
    expected_price,
    first_number,
    number_token_values,
    plan_batches,
    predict_ids,
    predict_prices,
)


def _jsonl(name: str) -> list[dict]:
    with open(PACKAGE_DIR / "sample_data" / name) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The session's tiny model (conftest), in fp32 on the CPU."""
    path = tiny_model_dir
    tokenizer = load_tokenizer(str(path), None, False)
    model = load_model(str(path), None, False, "sdpa", {}, "float32", "cpu", tokenizer.pad_token_id)
    return model, tokenizer


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return [r["text"] for r in _jsonl("test.jsonl")[:24]]


def _as_price(tokenizer, token_id: int) -> float:
    try:
        return float(tokenizer.decode([token_id]))
    except ValueError:
        return 0.0


def course_improved_predict(model, tokenizer, prompt: str, top_k: int = 3) -> tuple[float, bool]:
    """The reference: the course's improved predictor, one prompt, full logits, a Python loop.

    Where the course returned a tuple (no price in the top-K), the K likeliest price
    tokens are used instead; the second value says so.
    """
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = model(ids).logits[0, -1].float().softmax(-1)
    ranked = probs.argsort(descending=True).tolist()
    top = [(_as_price(tokenizer, i), probs[i].item()) for i in ranked[:top_k]]
    top = [(price, p) for price, p in top if price > 0]
    fallback = not top
    if fallback:
        top = [(price, probs[i].item()) for i in ranked if (price := _as_price(tokenizer, i)) > 0][:top_k]
    return sum(price * p for price, p in top) / sum(p for _, p in top), fallback


def test_batched_matches_each_prompt_alone(tiny, prompts):
    model, tokenizer = tiny
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    batches = plan_batches(lengths, batch_tokens=400)
    assert len(batches) > 2 and any(len({lengths[i] for i in b}) > 1 for b in batches)  # padded batches
    batched = predict_prices(model, tokenizer, prompts, TOP_K, batch_tokens=400)
    alone, fallbacks = zip(*(course_improved_predict(model, tokenizer, p) for p in prompts), strict=True)
    assert batched == pytest.approx(alone, rel=1e-5)
    assert len(set(round(x, 3) for x in alone)) > 3  # the prompts really differ
    assert 0 < sum(fallbacks) < len(prompts)  # both the top-K mean and the fallback were exercised
    reversed_order = predict_prices(model, tokenizer, prompts[::-1], TOP_K, batch_tokens=400)
    assert reversed_order == pytest.approx(list(alone)[::-1], rel=1e-5)


def _peft_with_dropout(tiny_model_dir, tokenizer, dropout: float):
    """The tiny model with a LoRA adapter on every attention and MLP projection; its random A and B
    make the adapter move every prediction, so dropout on its input would move them too."""
    from peft import LoraConfig, get_peft_model

    base = load_model(str(tiny_model_dir), None, False, "sdpa", {}, "float32", "cpu", tokenizer.pad_token_id)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


def test_prediction_runs_without_dropout_and_gives_training_back(tiny, tiny_model_dir, prompts):
    """A callback predicts mid-training, with the model in train mode: LoRA dropout of 0.9 must be off
    while it predicts (the same answers twice, and those of the same weights without dropout), and
    every module must be back in train mode afterwards, so training goes on with its dropout."""
    _, tokenizer = tiny
    model = _peft_with_dropout(tiny_model_dir, tokenizer, 0.9)
    without_dropout = _peft_with_dropout(tiny_model_dir, tokenizer, 0.0)
    without_dropout.load_state_dict(model.state_dict())
    without_dropout.eval()
    want = predict_prices(without_dropout, tokenizer, prompts[:8], TOP_K, BATCH_TOKENS)

    model.train()
    ids = tokenizer(prompts[:8])["input_ids"]
    live = predict_ids(model, ids, number_token_values(tokenizer), TOP_K, BATCH_TOKENS, tokenizer.pad_token_id)
    assert live != pytest.approx(want, rel=1e-3), "dropout left on would move the answers (the raw fast path keeps the mode)"
    first = predict_prices(model, tokenizer, prompts[:8], TOP_K, BATCH_TOKENS)
    second = predict_prices(model, tokenizer, prompts[:8], TOP_K, BATCH_TOKENS)
    assert first == second == pytest.approx(want, rel=1e-6)
    assert all(module.training for module in model.modules()), "train mode given back to every module"
    assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout["default"].p == 0.9

    model.eval()  # and a model in eval mode stays there
    predict_prices(model, tokenizer, prompts[:2], TOP_K, BATCH_TOKENS)
    assert not any(module.training for module in model.modules())


def test_plan_batches_respects_the_budget_and_covers_every_item():
    lengths = [5, 9, 7, 9, 3, 8, 1]
    batches = plan_batches(lengths, batch_tokens=18)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 18 for b in batches)
    assert [lengths[i] for b in batches for i in b] == sorted(lengths, reverse=True)
    assert plan_batches([30], batch_tokens=10) == [[0]]  # longer than the budget: alone


def test_number_token_values_reads_prices(tiny):
    _, tokenizer = tiny
    values = number_token_values(tokenizer)
    assert values[tokenizer.convert_tokens_to_ids("123")] == 123
    assert values[tokenizer.convert_tokens_to_ids("0")] == 0  # not a positive price
    assert values[tokenizer.convert_tokens_to_ids("Price")] == 0
    assert int((values > 0).sum()) >= 999


def test_expected_price_weights_renormalises_and_falls_back():
    values = torch.tensor([0.0, 0.0, 0.0, 10.0, 20.0, 40.0])  # ids 0-2 are words, 3-5 prices
    logits = torch.tensor(
        [
            [0.5, -1.0, -1.0, math.log(3.0), 0.0, -9.0],  # top-3: 10, a word, 20: 10*.75 + 20*.25
            [9.0, 8.0, 7.0, -5.0, math.log(2.0) - 5, -5.0],  # no price in top-3: the 3 likeliest prices
            [0.0] * 6,
        ]
    )
    logits[2] = float("nan")  # a broken model: a miss, not a crash
    guess = expected_price(logits, values, top_k=3)
    assert guess.tolist() == pytest.approx([12.5, (10 + 2 * 20 + 40) / 4, NO_ANSWER])


def test_fast_path_on_token_ids_keeps_input_order(tiny, prompts):
    """Batches run longest first; each answer must come back to its own prompt. The prompts' prices
    differ, so an answer given to the wrong prompt shows."""
    model, tokenizer = tiny
    values = number_token_values(tokenizer)
    sequences = tokenizer(prompts[:6])["input_ids"]
    lengths = [len(s) for s in sequences]
    plan = [i for b in plan_batches(lengths, 10_000) for i in b]  # one batch, longest first
    alone = [predict_ids(model, [s], values, TOP_K, BATCH_TOKENS)[0] for s in sequences]
    assert [alone[i] for i in plan] != pytest.approx(alone, rel=1e-3), "answers left in the plan's order would show"
    together = predict_ids(model, sequences, values, TOP_K, batch_tokens=10_000)
    assert together == pytest.approx(alone, rel=1e-5)
    reversed_order = predict_ids(model, sequences[::-1], values, TOP_K, batch_tokens=10_000)
    assert reversed_order == pytest.approx(alone[::-1], rel=1e-5)


def test_first_number_parses_the_course_answers():
    assert first_number("24.99 and more") == 24.99
    assert first_number("1,299.00") == 1299.0
    assert first_number("abc") == NO_ANSWER


def test_general_path_generates_and_parses():
    """A tokenizer without number tokens goes through generate; the answer is parsed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = ["7"] + [c for c in pre_tokenizers.ByteLevel.alphabet() if c != "7"] + ["<eos>"]
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")
    assert number_token_values(tokenizer) is None  # "42" is two tokens here
    config = LlamaConfig(vocab_size=len(chars), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=len(chars) - 1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # all logits equal: greedy picks id 0, the digit 7
    guesses = predict_prices(model, tokenizer, ["Price is $", "A much longer prompt. Price is $"], TOP_K,
                             BATCH_TOKENS)
    assert guesses == [7777.0, 7777.0]  # four new tokens, each "7"


def test_a_prompt_longer_than_training_is_cut_and_still_asks_for_the_price(tiny, prompts):
    """A 50k-word description is cut to max_length as training cuts it (the start kept) but keeps its
    `Price is $` ending: the guess is the cut prompt's, and no forward pass sees more than max_length."""
    model, tokenizer = tiny
    head, ending = prompts[0].rsplit("\n\nPrice is $", 1)
    long_prompt = head + " lorem" * 50_000 + "\n\nPrice is $" + ending
    ids = tokenizer([long_prompt])["input_ids"][0]
    tail = len(tokenizer("\n\nPrice is $", add_special_tokens=False)["input_ids"])
    assert len(ids) > 50_000 and tokenizer.decode(ids[-tail:]).endswith("Price is $")
    cut = ids[: 182 - tail] + ids[-tail:]
    values = number_token_values(tokenizer)
    want = predict_ids(model, [cut], values, TOP_K, BATCH_TOKENS, pad_id=tokenizer.pad_token_id)
    seen = []
    hook = model.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]),
                                                 with_kwargs=True)
    try:
        got = predict_prices(model, tokenizer, [long_prompt, prompts[1]], TOP_K, BATCH_TOKENS, max_length=182)
    finally:
        hook.remove()
    assert got[0] == pytest.approx(want[0]) and max(seen) == 182
    alone = predict_prices(model, tokenizer, [prompts[1]], TOP_K, BATCH_TOKENS)[0]
    assert got[1] == pytest.approx(alone), "short prompts are untouched"
