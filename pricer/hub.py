"""The run's private Hub repo: its account, its model card and the final push.

Checkpoints reach the repo through pricer.push (ordered, retried, kept until pushed);
this module holds the account behind the token, checked before training, and the
final commit of the adapter, tokenizer and a model card with the resolved config and
the metrics. Tokens come from the environment only and are never written here.
"""

import json
import re
from pathlib import Path
from typing import Any

# What a run's repo holds at the end; checkpoints, W&B files and logs stay local.
FINAL_FILES = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "README.md",
    "metrics.json",
    "config.yaml",
    "*.png",
]


def account_name() -> str:
    """The user behind HF_TOKEN: the default owner of every run's repo."""
    from huggingface_hub import whoami

    return whoami()["name"]


def checked_account(hf_user: str | None, attempts: int, wait_s: float) -> str:
    """The repo owner, after asking the Hub whether the token works: a refused token ends the run
    before training, not at its first push. A Hub that cannot be reached now may be back by the
    first save, so with hub.hf_user given the run goes on (its pushes retry and wait)."""
    import logging

    from pricer.config_errors import ConfigError
    from pricer.interrupt import Interrupted
    from pricer.retry import call_with_retries, can_succeed_later

    try:
        account = call_with_retries(account_name, "account lookup", attempts, wait_s)
    except Interrupted:
        raise
    except Exception as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if not can_succeed_later(err):
            raise ConfigError(f"the Hub refused the token in HF_TOKEN ({status or type(err).__name__}): set a valid "
                              "write token (huggingface.co/settings/tokens), or pass hub.push=false") from None
        if hf_user is None:
            raise ConfigError(f"the Hub is not reachable to look up the token's account ({type(err).__name__}): "
                              "set hub.hf_user=YOUR_NAME, or pass hub.push=false") from None
        logging.getLogger("pricer").warning("the Hub is not reachable now; pushes to %s will retry", hf_user)
        return hf_user
    return hf_user or account


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A LoRA adapter for {{ base_model }} trained by pricer (QLoRA with TRL, composed with Hydra) to read a
product description and answer its price (`Price is $...`). Run {{ run_name }}, dataset {{ dataset }}.

## Metrics

| metric | value |
|---|---|
{{ rows }}

## Resolved config

{{ fence }}yaml
{{ config_yaml }}
{{ fence }}
"""
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _longest_run(text: str, char: str) -> int:
    return max((len(run) for run in re.findall(f"{re.escape(char)}+", text)), default=0)


def code_span(value: Any) -> str:
    """A value as inline code that cannot change the card's structure: on one line (newlines written as
    \\n, as JSON writes them), fenced by more backticks than it holds, `|` escaped for table cells. Inside
    code, HTML and Markdown are text."""
    text = json.dumps(str(value), ensure_ascii=False)[1:-1].replace("|", "\\|")
    fence = "`" * (_longest_run(text, "`") + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def code_fence(text: str) -> str:
    """A fence longer than any backtick run in `text`: no line of it can close the block early (CommonMark
    closes a fence only with at least as many backticks, indented by up to 3 spaces, as YAML does)."""
    return "`" * max(3, _longest_run(text, "`") + 1)


def model_card(
    repo_id: str, base_model: str, dataset: str, run_name: str, config_yaml: str, metrics: dict[str, Any]
) -> str:
    """A model card: Hub metadata up top (huggingface_hub's ModelCardData writes the YAML the Hub
    validates), then what a reader needs to reproduce the run. Every value from the config goes in as
    code (a span, or the fenced block), so none can add a heading, HTML or a link to the card."""
    from huggingface_hub import ModelCard, ModelCardData

    rows = "\n".join(f"| {code_span(key)} | {value:.4g} |" if isinstance(value, float) else
                     f"| {code_span(key)} | {code_span(value)} |" for key, value in metrics.items())
    base = code_span(base_model)
    if _REPO_ID.match(base_model) and "/" in base_model:  # a Hub model id: link it; a local path is code only
        base = f"[{base}](https://huggingface.co/{base_model})"
    data = ModelCardData(base_model=base_model, library_name="peft", pipeline_tag="text-generation",
                         tags=["pricer", "qlora", "lora", "trl", "sft"], datasets=[dataset])
    config_yaml = config_yaml.rstrip()
    card = ModelCard.from_template(data, template_str=CARD_TEMPLATE, title=repo_id.split("/")[-1],
                                   base_model=base, run_name=code_span(run_name), dataset=code_span(dataset), rows=rows,
                                   fence=code_fence(config_yaml), config_yaml=config_yaml)
    return str(card)


def push_final(repo_id: str, adapter_dir: Path, private: bool) -> str:
    """Commit the final adapter dir (card and metrics already written); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=adapter_dir,
        allow_patterns=FINAL_FILES,
        # The Hub's `*` crosses `/`: without this, `*.png` would pick up W&B media and checkpoint files.
        ignore_patterns=["*/*"],
        # every_save pushes also sent training_args.bin and the like: the final commit removes
        # whatever is not a final file, so the repo ends up holding exactly those.
        delete_patterns=["*"],
        commit_message="final adapter, tokenizer and model card",
    )
    return commit.commit_url
