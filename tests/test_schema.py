"""pricer's typed schema (conf/ holds every default), the library objects built from the groups,
the notes a run logs for presets that set other groups, and pricer.push's settings from the run."""

import dataclasses
import re
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_train, run_cli_in_process
from omegaconf import OmegaConf

from pricer.config import validate
from pricer.config_errors import ConfigError
from pricer.presets import preset_notes, preset_overrides

DEMO = ["experiment=demo"]


# pricer's own settings: every one must be written in conf/ (the library groups lora, quant, optimizer,
# scheduler and training take their library's defaults for what they leave out)
PRICER_GROUPS = ("model", "data", "hub", "tracking", "evaluation", "hardware")


def pricer_keys() -> list[str]:
    """Every top-level setting and every key of pricer's own groups, as composed (tracking=wandb: its
    longest form), read from the config rather than from the schema."""
    cfg, _ = compose_train([*DEMO, "tracking=wandb"])
    top = [key for key, value in cfg.items() if not OmegaConf.is_dict(value)]
    return top + [f"{group}.{key}" for group in PRICER_GROUPS for key in cfg[group]]


@pytest.mark.parametrize("key", pricer_keys())
def test_a_setting_left_out_of_conf_is_an_error_not_a_default(key: str) -> None:
    """conf/ holds every value: a key a file forgot is an error naming it, never a value filled in from
    a second copy that a YAML edit would not reach."""

    def drop(cfg) -> None:
        parent, _, name = key.rpartition(".")
        (OmegaConf.select(cfg, parent) if parent else cfg).pop(name)

    # a key other keys interpolate (${project}, ${hardware.compute_dtype}) is named by the interpolation
    named = rf"^{re.escape(key)} is missing: add it|^InterpolationKeyError: Interpolation key '{re.escape(key)}' not found"
    with pytest.raises(ConfigError, match=named) as err:
        validate_demo(["tracking=wandb"], drop)
    assert "\n" not in str(err.value)


def validate_demo(overrides: list[str], edit=None):
    cfg, choices = compose_train([*DEMO, *overrides])
    if edit:
        edit(cfg)
    return validate(cfg, choices, check_machine=False)


BAD = [  # what the schema itself says, beside tests/test_bad_input.py's table
    ([], lambda c: c.hub.pop("push_attempts"), "hub.push_attempts is missing: add it to the config"),
    ([], lambda c: c.pop("seed"), "seed is missing"),
    ([], lambda c: c.hardware.pop("liger"), "hardware.liger is missing"),
    (["tracking=wandb"], lambda c: c.tracking.pop("project"), "tracking.project is missing"),
    (["+tracking.run=x"], None, "tracking.run is not a known key"),
    ([], lambda c: c.tracking.pop("backend"), "tracking.backend is missing"),
    (["evaluation.top_k=0"], None, "evaluation.top_k=0 must be a positive integer"),
    (["evaluation.eval_steps=-1"], None, "evaluation.eval_steps=-1 must be a positive integer or null"),
    (["hub.push_wait_s=soon"], None, "hub.push_wait_s='soon' must be a number"),
    (["hardware.per_device_train_batch_size=big"], None,
     "hardware.per_device_train_batch_size='big' must be a positive integer or auto"),
    (["hardware.accelerator=tpu"], None, "hardware.accelerator=tpu is not one of cuda, cpu"),
    ([], lambda c: c.pop("model"), "model is missing"),
    ([], lambda c: c.__setitem__("hub", "on"), "hub='on' must be a group of keys"),
    # the library's own object refuses it: LoraConfig, SFTConfig, each as one line
    (["+lora.layers_pattern=layers"], None, "lora: `layers_pattern` cannot be used when `target_modules` is a str: fix"),
    (["training.eval_strategy=sometimes"], None, "SFTConfig refused them: sometimes is not a valid IntervalStrategy"),
]


@pytest.mark.parametrize(("overrides", "edit", "message"), BAD, ids=[m.split(" ")[0] + " " + " ".join(o) for o, _, m in BAD])
def test_schema_errors_name_the_key(overrides: list[str], edit, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        validate_demo(overrides, edit)
    assert "\n" not in str(err.value)


def test_the_schema_values_pass_through_unchanged() -> None:
    run = validate_demo(["hardware.per_device_train_batch_size=4"])
    assert run.tracking.backend == "none" and run.hardware.accelerator == "cpu" and run.sft["per_device_train_batch_size"] == 4


def test_pricer_evaluate_takes_every_evaluation_key_and_refuses_others(capsys: pytest.CaptureFixture) -> None:
    """`python -m pricer.evaluate ... evaluation.KEY=...` checks KEY against the group, since a saved run
    config would take a typo silently: each key conf/train.yaml has passes, a misspelt one is refused."""
    from pricer.evaluate import _parse_args

    for key, value in OmegaConf.load(CONF_DIR / "train.yaml").evaluation.items():
        assert _parse_args(["--adapter", "none", f"evaluation.{key}={value}"]).overrides == [f"evaluation.{key}={value}"]
    with pytest.raises(SystemExit) as exit_:
        _parse_args(["--adapter", "none", "evaluation.top_kk=3"])
    assert exit_.value.code == 2
    assert "evaluation.top_kk is not a known key (did you mean evaluation.top_k?)" in capsys.readouterr().err


@pytest.mark.parametrize("hardware", sorted(p.stem for p in (CONF_DIR / "hardware").glob("*.yaml")))
def test_each_hardware_key_goes_to_the_trainer_or_to_pricer(hardware: str) -> None:
    """A hardware key that is an SFTConfig field reaches the trainer's arguments; the others (accelerator,
    memory, dtype, kernel switches) are pricer's own settings of the run and never reach SFTConfig,
    which would refuse them."""
    from trl import SFTConfig

    from pricer.sft import build_sft_config

    cfg, choices = compose_train([f"hardware={hardware}", "optimizer=adamw_torch"])
    run = validate(cfg, choices, check_machine=False)
    trainer_fields = {f.name for f in dataclasses.fields(SFTConfig)}
    for key, value in cfg.hardware.items():
        if key in trainer_fields:
            assert run.sft[key] == value and not hasattr(run, key), key
        else:
            assert key not in run.sft and getattr(run.hardware, key) == value, key
    assert build_sft_config(run.sft, output_dir="unused", run_name="r", report_to=[], seed=0, use_cpu=True)


@pytest.mark.parametrize("hardware", ["a100", "h100", "t4"])
def test_a_preset_that_sets_another_group_says_so(hardware: str) -> None:
    """hardware=a100/h100/t4 pick the fused AdamW: the run's first log line and the file's first lines say it."""
    _, choices = compose_train([f"hardware={hardware}"])
    assert preset_notes(choices) == [f"hardware={hardware} also sets optimizer=adamw_torch_fused"]
    _, choices = compose_train([f"hardware={hardware}", "optimizer=paged_adamw_8bit"])
    assert preset_notes(choices) == [], "the command line won: nothing set behind the user's back"


def test_presets_of_other_groups_set_nothing_else() -> None:
    for overrides in ([], ["hardware=a100_notebook"], ["hardware=cpu", "optimizer=adamw_torch"], ["lora=r8", "quant=int8"]):
        assert preset_notes(compose_train(overrides)[1]) == [], overrides
    notes = preset_notes(compose_train(DEMO)[1])
    assert len(notes) == 1 and notes[0].startswith("experiment=demo also sets model=tiny, data=sample, hardware=cpu")


@pytest.mark.parametrize("path", sorted((CONF_DIR / "hardware").glob("*.yaml")), ids=lambda p: p.stem)
def test_hardware_files_name_what_else_they_set_in_their_first_lines(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# python -m pricer.train ") and f"hardware={path.stem}" in lines[0]
    for group, option in preset_overrides("hardware", path.stem).items():
        assert f"Also sets {group}={option}" in lines[1], path


def write_run(run_dir: Path, hub: dict | None) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"hub": hub} if hub else {"model": {}}))
    (run_dir / "run.json").write_text('{"repo_id": "me/pricer-x", "private": true}')


def test_push_reads_its_retry_settings_from_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No second copy of hub.push_attempts/push_wait_s in pricer.push: the run's composed config
    holds them, and a flag beats it."""
    from pricer import push

    calls = []
    monkeypatch.setattr(push, "push_pending", lambda run_dir, attempts, wait_s: calls.append((attempts, wait_s)) or [])
    monkeypatch.setattr(push, "read_run", lambda run_dir: {"repo_id": "me/pricer-x"})
    write_run(tmp_path / "run", {"push_attempts": 3, "push_wait_s": 0.5})
    for argv, expected in (([], (3, 0.5)), (["--attempts", "7"], (7, 0.5)), (["--wait-s", "0"], (3, 0.0))):
        monkeypatch.setattr(sys, "argv", ["pricer.push", str(tmp_path / "run"), *argv])
        push.main()
        assert calls.pop() == expected, argv
    write_run(tmp_path / "old", None)
    monkeypatch.setattr(sys, "argv", ["pricer.push", str(tmp_path / "old")])
    with pytest.raises(SystemExit, match=r"has no hub.push_attempts: pass --attempts N"):
        push.main()


@pytest.mark.parametrize(("preset", "message"), [
    ("liger: sometimes", "hardware.liger='sometimes' must be true or false"),
    ("lgier: true", "hardware.lgier is not a known key (did you mean hardware.liger?): remove it or fix its name"),
    ("accelerator: tpu", "hardware.accelerator=tpu is not one of cuda, cpu"),
])
def test_a_users_preset_is_refused_while_hydra_composes(preset: str, message: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A preset of the user's own (another search path) is held to the schema as Hydra composes it: `--cfg job`,
    which prints the config and runs none of pricer's checks, already refuses it, in pricer's one line, exit 2."""
    (tmp_path / "hardware").mkdir()
    (tmp_path / "hardware" / "mine.yaml").write_text(f"defaults:\n  - cpu\n  - _self_\n{preset}\n")
    out = run_cli_in_process(["experiment=demo", f"hydra.searchpath=[file://{tmp_path}]", "hardware=mine", "--cfg", "job"],
                             monkeypatch, capsys)
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and errors == [f"error: {message}"], (out.returncode, out.stderr[-2000:])
    assert "hardware:" not in out.stdout, "nothing printed as if it were the config"


def test_an_override_of_a_key_no_preset_sets_says_how_to_add_it(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    out = run_cli_in_process(["experiment=demo", "lora.use_dora=true", "--cfg", "job"], monkeypatch, capsys)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: lora.use_dora is not set by any preset: fix its name, or add it with +lora.use_dora=..."
