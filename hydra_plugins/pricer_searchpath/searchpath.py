"""`sweep=NAME` on the command line selects `sweeps/NAME.yaml` at the repo root.

Hydra finds a config group in a folder named like the group, under a search-path
root. The repo keeps its sweeps in `sweeps/` (plural, next to `conf/`), while the
group is `sweep` (like `experiment`); adding the repo root to the search path would
also turn every other folder of the repo into a config group. So a small config
source serves exactly one group, `sweep`, from `sweeps/`, and the search-path plugin
adds it after the app's own configs:

    pricer-sweeps:///path/to/repo/sweeps   ->   group `sweep` = sweeps/*.yaml

The folder is found from the pricer package (repo root = its parent) without
importing pricer, so plugin discovery stays instant. The same hook stores pricer's config
schema (pricer.schema) in Hydra's ConfigStore: Hydra asks it for the search path before it
composes any config, whether through @hydra.main or the compose API.
"""

import importlib.util
import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

GROUP = "sweep"
SCHEME = "pricer-sweeps"


def sweeps_dir() -> Path | None:
    spec = importlib.util.find_spec("pricer")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parents[1] / "sweeps"


class PricerSweepsSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from pricer import schema

        schema.register()  # conf/train.yaml's first default, `pricer_schema`
        folder = sweeps_dir()
        if folder is not None and folder.is_dir():
            search_path.append(provider="pricer-sweeps", path=f"{SCHEME}://{folder}")


class PricerSweepsConfigSource(ConfigSource):
    """Group `sweep` only: `sweep/tpe.yaml` is read from `{path}/tpe.yaml`."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def _file(self, config_path: str) -> Path | None:
        group, _, name = config_path.partition("/")
        if group != GROUP or not name or "/" in name:
            return None
        return Path(self.path) / self._normalize_file_name(name)

    def load_config(self, config_path: str) -> ConfigResult:
        path = self._file(config_path)
        if path is None or not path.is_file():
            raise ConfigLoadError(f"Config not found: {config_path} (looked in {self.path})")
        text = path.read_text(encoding="utf-8")
        return ConfigResult(
            config=OmegaConf.create(text) if text.strip() else OmegaConf.create({}),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header=ConfigSource._get_header_dict(text[:512]),
        )

    def available(self) -> bool:
        return os.path.isdir(self.path)

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", GROUP)

    def is_config(self, config_path: str) -> bool:
        path = self._file(config_path)
        return path is not None and path.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        if config_path != GROUP or results_filter == ObjectType.GROUP:
            return []
        return sorted(p.stem for p in Path(self.path).glob("*.yaml"))
