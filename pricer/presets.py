"""What a command line does beyond the keys it names: presets that also pick another group, and
keys given twice (Hydra silently keeps the last of each)."""

from pathlib import Path

from pricer.config_errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def preset_notes(choices: dict[str, str], conf_dir: Path = CONF_DIR) -> list[str]:
    """One line per chosen preset that also set another group through its defaults list, e.g.
    "hardware=h100 also sets optimizer=adamw_torch_fused": a run logs these first, so a group
    the user never named does not change silently. Only what took effect (Hydra's final
    `choices` agree); an `optimizer=...` on the command line wins and is no surprise."""
    notes = []
    for group, option in choices.items():
        if not option or group.startswith("hydra"):
            continue
        sets = {g: o for g, o in preset_overrides(group, option, conf_dir).items() if choices.get(g) == o}
        if sets:
            notes.append(f"{group}={option} also sets " + ", ".join(f"{g}={o}" for g, o in sets.items()))
    return notes


def preset_overrides(group: str, option: str, conf_dir: Path = CONF_DIR) -> dict[str, str]:
    """The other groups `conf/{group}/{option}.yaml` picks in its defaults list (`override
    /optimizer@...: adamw_torch_fused`), through the same group's files it extends (`- a100_notebook`)."""
    import yaml

    path = conf_dir / group / f"{option}.yaml"
    if not path.is_file():  # a preset from another search path (sweeps/): not ours to read
        return {}
    found: dict[str, str] = {}
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            found |= preset_overrides(group, entry, conf_dir)
        elif isinstance(entry, dict):
            for key, value in entry.items():
                name = key.removeprefix("override ").removeprefix("optional ").strip()
                if name.startswith("/") and value is not None:
                    found[name[1:].split("@")[0]] = str(value)
    return found


def override_key(override: str) -> str:
    """The key a command-line override sets: `+lora.r=8` and `lora.r=8` both set lora.r."""
    return override.split("=", 1)[0].lstrip("+")


def check_repeated_overrides(overrides: list[str]) -> None:
    """One key given twice on the command line (`lora=r8 lora=r64`): Hydra silently takes the last."""
    seen: dict[str, str] = {}
    for override in overrides:
        key = override_key(override)
        if "=" not in override or key.startswith("~"):
            continue
        if key in seen:
            raise ConfigError(f"{key} is given twice ({seen[key]}, {override}): Hydra would take the last silently: "
                              "keep one (a sweep over both: --multirun " + f"{key}={seen[key].split('=', 1)[1]},"
                              f"{override.split('=', 1)[1]})")
        seen[key] = override
