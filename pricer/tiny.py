"""A tiny random-init Llama with a Llama-3-like tokenizer, built locally.

Tests and the demo cannot download weights, so `model=tiny` builds a model of the
same family as Llama 3.1 and saves it with `save_pretrained`: the real
`from_pretrained` loading path then runs on local files. Like Llama 3's tokenizer,
this one encodes every integer 0..999 as a single token, so the fast evaluation
path (one forward pass, read the price token) is exercised as on the real model.
"""

import json
import os
import shutil
from pathlib import Path

# Dimensions are multiples of 64 so bitsandbytes can quantize every linear layer.
TINY_LLAMA = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rope_theta=500_000.0,
    tie_word_embeddings=False,
)
TEXT_MERGES = 400  # byte-level BPE merges learned from the sample texts
DIGIT_SPLIT = r"\p{N}{1,3}"  # Llama 3's rule: numbers split into groups of up to 3 digits
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>"]


def _digit_merges(rank_of: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """Merges that make every 2- and 3-digit string a single token.

    BPE applies the lowest-ranked merge first, so for "123" the first merge is
    "1 2" or "2 3" depending on their ranks; the second merge must then join
    whichever pair is left ("12 3" or "1 23").
    """
    digits = "0123456789"
    pairs = [(a, b) for a in digits for b in digits]
    merges = list(pairs)
    for pair in pairs:
        rank_of[pair] = len(rank_of)
    for a in digits:
        for b in digits:
            for c in digits:
                merges.append((a + b, c) if rank_of[(a, b)] <= rank_of[(b, c)] else (a, b + c))
    return merges


def build_tokenizer(texts: list[str]):
    """Byte-level BPE trained on `texts`, plus one token for each of 0..999."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(DIGIT_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + TEXT_MERGES, initial_alphabet=alphabet, show_progress=False
    )
    # Digits are removed from the corpus so that no learned merge involves them.
    learner.train_from_iterator(("".join(ch for ch in t if not ch.isdigit()) for t in texts), trainer)
    state = json.loads(learner.to_str())["model"]
    vocab: dict[str, int] = dict(state["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    rank_of = {m: i for i, m in enumerate(merges)}
    for left, right in _digit_merges(rank_of):
        merges.append((left, right))
        vocab.setdefault(left + right, len(vocab))

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1]
    )


def build_tiny_model(path: str | Path, texts: list[str], seed: int = 0) -> Path:
    """Save a random-init tiny Llama and its tokenizer at `path` (once; reused after)."""
    path = Path(path).expanduser()
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY_LLAMA,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # A crash never leaves a half-built model, and runs starting together (CPU sweep workers, two
    # demos) each build in their own staging dir: the first rename wins, the others drop theirs.
    staging = path.with_name(f"{path.name}.partial-{os.getpid()}")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(path)
    except OSError:
        if not (path / "config.json").exists():
            raise
        shutil.rmtree(staging)
    return path
