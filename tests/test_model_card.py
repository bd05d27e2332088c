"""The model card keeps its structure whatever the config holds: no config value can close its code block.

A run's resolved config goes into the card's fenced block and its names into the text. An
output_root holding real newlines, backticks, HTML and a heading ended the code block early,
so an `<img onerror=...>` line and a heading rendered in the card. The card is read back with
markdown-it (CommonMark, as the Hub renders README files) and its blocks are compared.
"""

import os
from pathlib import Path

import pytest
from conftest import run_cli
from markdown_it import MarkdownIt

EVIL = "x\n```\n<img src=x onerror=alert(1)>\n# Pwned\n"


@pytest.mark.slow  # trains a few steps
def test_config_values_cannot_change_the_cards_structure(tmp_path: Path) -> None:
    root = tmp_path / EVIL
    out = run_cli(["experiment=demo", "training.max_steps=2", "training.save_steps=2", "evaluation.test_items=10",
                   f"output_root='{root}'"], env={"WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr[-3000:]
    (card_file,) = root.glob("runs/*/adapter/README.md")
    tokens = MarkdownIt("commonmark").parse(card_file.read_text())
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings[1:] == ["Metrics", "Resolved config"] and headings[0].startswith("pricer-"), headings
    assert not [t for t in tokens if t.type == "html_block"], "HTML rendered as HTML"
    assert not [c for t in tokens if t.children for c in t.children if c.type == "html_inline"]
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == 1 and fences[0].info == "yaml"
    assert "<img src=x onerror=alert(1)>" in fences[0].content and "# Pwned" in fences[0].content  # all of it, as code
    # tracking=none: transformers' import-time "Running in WANDB offline mode" (WANDB_MODE=offline) is not printed
    assert "Running in WANDB offline mode" not in out.stdout + out.stderr
    assert os.environ.get("WANDB_MODE") == "offline"
