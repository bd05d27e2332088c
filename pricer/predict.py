"""Batched price prediction: one forward pass per batch, or batched greedy generation.

Llama 3's tokenizer encodes every integer 0..999 as one token, so after `Price is $`
one forward pass gives the whole distribution over prices: the prediction is the
probability-weighted mean of the top-K next tokens that are positive numbers (the
course's improved predictor). pricer runs it over batches instead of one prompt at
a time, with three habits that make it fast:
- prompts are sorted by length and cut into batches of about `batch_tokens` tokens,
  so almost no compute goes to padding;
- right padding and no attention mask: under causal attention a real token never
  sees the pads after it, so padding cannot change a prediction, and SDPA keeps
  its fused causal kernel (no mask to build);
- the LM head runs on each row's last real position only, results stay on the
  device until one copy to the host at the end, back in the caller's order.
Tokenizers without single number tokens fall back to greedy generation.
"""

import math
import re

import torch

from pricer.modeling import unwrap_peft

GENERATE_TOKENS = 4  # "123.45" is "123", ".", "45": the first token already holds the dollars
NO_ANSWER = 0.0  # an unparseable answer: the course's extract_price also returns 0 (a miss, never hidden)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _as_price(text: str) -> float:
    """The course's rule: a token is a price if float() reads it as a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def number_token_values(tokenizer) -> torch.Tensor | None:
    """Each token id's price (0 where it is none), or None if 0..999 are not single tokens.

    Checked once per tokenizer: the fast path is only right when the first token
    after `Price is $` holds the whole dollar amount.
    """
    for n in range(1000):
        if len(tokenizer.encode(str(n), add_special_tokens=False)) != 1:
            return None
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor([_as_price(text) for text in texts], dtype=torch.float32)


def plan_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first, each batch at most `batch_tokens` once padded.

    Longest first: the largest activations are allocated at once, so an
    out-of-memory shows on the first batch, not the last. Batches are then evened
    out (250 prompts in two batches of 125, not 180 + 70): each forward pass has
    fixed costs (with nf4, bitsandbytes dequantizes every weight once per pass),
    best spread over many tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    fewest = len(_fill(order, lengths, batch_tokens, len(order)))
    cap = -(-len(order) // max(fewest, 1))  # the even share; raised until no extra batch is needed
    while len(batches := _fill(order, lengths, batch_tokens, cap)) > fewest:
        cap += 1
    return batches


def _fill(order: list[int], lengths: list[int], batch_tokens: int, max_items: int) -> list[list[int]]:
    batches: list[list[int]] = []
    for index in order:
        # sorted descending: the batch's first item sets its padded width
        last = batches[-1] if batches else []
        if last and len(last) < max_items and (len(last) + 1) * lengths[last[0]] <= batch_tokens:
            last.append(index)
        else:
            batches.append([index])
    return batches


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded to the longest row, and the mask of real tokens."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[r, span] = torch.tensor(row, dtype=torch.long)
        mask[r, span] = 1
    return ids, mask


def _decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body and its LM head, through a peft wrapper if there is one.

    peft injects LoRA layers (and `modules_to_save` copies of lm_head) into the
    base model's own modules, so calling them directly keeps the adapter active.
    """
    model = unwrap_peft(model)
    return model.base_model, model.get_output_embeddings()


def expected_price(logits: torch.Tensor, values: torch.Tensor, top_k: int) -> torch.Tensor:
    """Probability-weighted mean of the top-K tokens that are prices, one per row.

    Softmax over the kept candidates' logits equals their probabilities
    renormalised. A row whose top-K holds no price takes the K most likely price
    tokens instead (the widest search, always defined when 0..999 are tokens).
    """
    logits = logits[:, : values.shape[0]].float()
    is_price = values > 0
    top_logits, top_ids = logits.topk(top_k, dim=-1)
    top_values = values[top_ids]
    weights = top_logits.masked_fill(top_values <= 0, -math.inf).softmax(dim=-1)
    guess = (weights.nan_to_num(0.0) * top_values).sum(dim=-1)
    wide_logits, wide_ids = logits.masked_fill(~is_price, -math.inf).topk(top_k, dim=-1)
    wide = (wide_logits.softmax(dim=-1) * values[wide_ids]).sum(dim=-1)
    guess = torch.where((top_values > 0).any(dim=-1), guess, wide)
    return guess.nan_to_num(NO_ANSWER, NO_ANSWER, NO_ANSWER)  # a model that outputs NaN scores a miss


@torch.inference_mode()
def predict_ids(
    model,
    sequences: list[list[int]],
    values: torch.Tensor,
    top_k: int,
    batch_tokens: int,
    pad_id: int = 0,
) -> list[float]:
    """Fast path on token ids (each ending at `Price is $`); predictions in input order."""
    if not sequences:
        return []
    decoder, head = _decoder_and_head(model)
    device = next(model.parameters()).device
    values = values.to(device)
    batches = plan_batches([len(s) for s in sequences], batch_tokens)
    # every copy to the device is queued before the first forward: no sync in the loop
    inputs = []
    for batch in batches:
        ids, mask = _pad([sequences[i] for i in batch], pad_id, left=False)
        inputs.append((ids.to(device, non_blocking=True), (mask.sum(dim=1) - 1).to(device, non_blocking=True)))
    guesses = []
    for ids, last in inputs:
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state  # no mask: causal is enough
        last_hidden = hidden[torch.arange(ids.shape[0], device=device), last]
        guesses.append(expected_price(head(last_hidden), values, top_k))
    order = torch.tensor([i for batch in batches for i in batch], device=device)
    result = torch.empty(len(sequences), device=device)
    result[order] = torch.cat(guesses)
    return result.cpu().tolist()


def first_number(text: str) -> float:
    """The first number in a generated answer ('24.99 ...' -> 24.99), else NO_ANSWER."""
    match = _NUMBER.search(text.replace(",", ""))
    return float(match.group()) if match else NO_ANSWER


@torch.inference_mode()
def generate_prices(
    model,
    tokenizer,
    sequences: list[list[int]],
    batch_tokens: int,
    max_new_tokens: int = GENERATE_TOKENS,
) -> list[float]:
    """General path: batched greedy generation (left padding), then the first number."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    guesses: list[float] = [NO_ANSWER] * len(sequences)
    for batch in plan_batches([len(s) for s in sequences], batch_tokens):
        ids, mask = _pad([sequences[i] for i in batch], pad_id, left=True)
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad_id,
        )
        answers = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        for i, text in zip(batch, answers, strict=True):
            guesses[i] = first_number(text)
    return guesses


def cut_to_length(sequences: list[list[int]], max_length: int | None, tail: int) -> list[list[int]]:
    """Prompts longer than training's max_length, cut as training cuts them (the start kept), but
    with their last `tail` tokens (`Price is $`) kept too, so the cut prompt still asks for a price.
    Unbounded, one 50k-word test text made an evaluation take 441 s instead of ~10."""
    if max_length is None:
        return sequences
    keep = max(max_length - tail, 1)
    return [s if len(s) <= max_length else s[:keep] + s[-tail:] for s in sequences]


def predict_prices(
    model,
    tokenizer,
    prompts: list[str],
    top_k: int,
    batch_tokens: int,
    values: torch.Tensor | None = None,
    max_length: int | None = None,
) -> list[float]:
    """One price per prompt (each ending at `Price is $`), in the prompts' order.

    `values` (from `number_token_values`) can be passed by callers that predict
    repeatedly, so the tokenizer is inspected once. `max_length`: training's, to cut
    longer prompts to (cut_to_length).
    """
    tail = len(tokenizer("\n\nPrice is $", add_special_tokens=False)["input_ids"])
    sequences = cut_to_length(tokenizer(prompts)["input_ids"], max_length, tail)
    if values is None:
        values = number_token_values(tokenizer)
    was_training = model.training
    model.eval()  # dropout off (LoRA dropout too); restored for a callback mid-training
    try:
        if values is None:
            return generate_prices(model, tokenizer, sequences, batch_tokens)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return predict_ids(model, sequences, values, top_k, batch_tokens, pad_id)
    finally:
        model.train(was_training)
