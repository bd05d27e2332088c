"""BENCHMARKS.md holds one section per benchmark; each script rewrites only its own."""

import re
from pathlib import Path


def write_section(path: Path, title: str, section: str) -> None:
    """Replace the section headed `title` (e.g. "## Training throughput"), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = section.rstrip() + "\n\n"
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    path.write_text(text.rstrip() + "\n")
