"""The run's private Hub repo: its account, its model card and the final push.

Checkpoints reach the repo through the Trainer (`hub_strategy=every_save`); this
module adds what the Trainer does not: the account behind the token, and a final
commit of the adapter, tokenizer and a model card with the resolved config and
the metrics. Tokens come from the environment only and are never written here.
"""

import json
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


def model_card(
    repo_id: str, base_model: str, dataset: str, run_name: str, config_yaml: str, metrics: dict[str, Any]
) -> str:
    """A model card: Hub metadata up top, then what a reader needs to reproduce the run."""
    rows = "\n".join(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                     for key, value in metrics.items())
    # json.dumps quotes as YAML reads it: a local path or a name with ': ' stays one string.
    return f"""---
base_model: {json.dumps(base_model)}
library_name: peft
pipeline_tag: text-generation
tags: [pricer, qlora, lora, trl, sft]
datasets: [{json.dumps(dataset)}]
---

# {repo_id.split('/')[-1]}

A LoRA adapter for [{base_model}](https://huggingface.co/{base_model}) trained by
pricer (QLoRA with TRL, composed with Hydra) to read a product description and answer its price
(`Price is $...`). Run `{run_name}`, dataset `{dataset}`.

## Metrics

| metric | value |
|---|---|
{rows}

## Resolved config

```yaml
{config_yaml.rstrip()}
```
"""


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
