"""pricer: QLoRA fine-tuning of an LLM to price products, composed with Hydra.

Importing the package stays light (no torch) so `--cfg job` answers at once.
"""

from pathlib import Path

from omegaconf import OmegaConf

from pricer.logs import drop_known_noise

PACKAGE_DIR = Path(__file__).resolve().parent

# `${pricer_path:sample_data/train.jsonl}` in a config: a file shipped inside the package.
OmegaConf.register_new_resolver("pricer_path", lambda rel: str(PACKAGE_DIR / rel), replace=True)

drop_known_noise()  # before any command imports transformers (and bitsandbytes with it)
