"""pricer.hub against the real huggingface_hub client and a local Hub stand-in (tests/hub_server.py).

The client runs its own code paths (create_repo, upload_folder with its preupload/commit calls);
only the server is local. So these tests catch what a mock would not: which files an
`allow_patterns` list really selects, what a push leaves in the repo, what reaches the server.
"""

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

from hub_server import GITATTRIBUTES, HubStandIn
from pricer import hub
from pricer.push import push_checkpoint

REPO = "pricer-tester/pricer-2026-01-01_12.00.00"
CONFIG_YAML = "model:\n  pretrained_model_name_or_path: meta-llama/Llama-3.1-8B\nlora:\n  r: 32\n"
METRICS = {"train_loss": 1.23456, "train_steps": 5, "trainable_params": 4096}

# Final files: what push_final must upload, byte for byte (binary ones with every byte value).
FINAL = {
    "adapter_config.json": b'{"r": 32, "lora_alpha": 64}',
    "adapter_model.safetensors": bytes(range(256)) * 8,
    "tokenizer.json": b'{"model": {"type": "BPE"}}',
    "tokenizer_config.json": b'{"padding_side": "right"}',
    "special_tokens_map.json": b'{"eos_token": "<|eot_id|>"}',
    "chat_template.jinja": b"{{ messages }}",
    "metrics.json": json.dumps(METRICS).encode(),
    "config.yaml": CONFIG_YAML.encode(),
    "predictions.png": b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)),
}
# Everything else a run dir holds: checkpoints, W&B, Hydra and logs must stay local.
LOCAL_ONLY = {
    "checkpoint-5/adapter_model.safetensors": b"ckpt weights",
    "checkpoint-5/optimizer.pt": b"optimizer state",
    "checkpoint-5/trainer_state.json": b"{}",
    "checkpoint-5/loss.png": b"\x89PNG checkpoint plot",
    "wandb/offline-run-1/run-1.wandb": b"wandb records",
    "wandb/offline-run-1/files/media/images/chart.png": b"\x89PNG wandb media",
    ".hydra/config.yaml": b"hydra: {}",
    "train.log": b"INFO training",
    "training_args.bin": b"pickled args",
}


def card() -> str:
    return hub.model_card(REPO, "meta-llama/Llama-3.1-8B", "ed-donner/pricer-data", "2026-01-01_12.00.00",
                          CONFIG_YAML, METRICS)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run's directory, as pricer.train leaves it before the final push."""
    files = {**FINAL, **LOCAL_ONLY, "README.md": card().encode()}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    return tmp_path


def front_matter(text: str) -> dict:
    """The card's YAML metadata block, parsed as the Hub does."""
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.slow  # starts the local Hub server
def test_account_name_is_the_token_owner(hub_stand_in: HubStandIn) -> None:
    assert hub.account_name() == hub_stand_in.user
    assert [r.authorized for r in hub_stand_in.requests_to("/api/whoami-v2")] == [True]


@pytest.mark.slow  # starts the local Hub server
def test_account_name_without_token_fails_before_any_request(hub_stand_in: HubStandIn,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(LocalTokenNotFoundError):
        hub.account_name()
    assert hub_stand_in.requests == []


@pytest.mark.slow  # starts the local Hub server
def test_account_name_with_a_wrong_token_is_rejected(hub_stand_in: HubStandIn,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    with pytest.raises(HfHubHTTPError) as err:
        hub.account_name()
    assert err.value.response.status_code == 401


@pytest.mark.slow  # starts the local Hub server
@pytest.mark.parametrize("xet", [True, False], ids=["with-hf_xet", "without-hf_xet"])
def test_push_final_uploads_exactly_the_final_files_to_a_private_repo(
    hub_stand_in: HubStandIn, run_dir: Path, monkeypatch: pytest.MonkeyPatch, xet: bool
) -> None:
    """Both client upload paths: with hf_xet installed (here) and without (as on some GPU images)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)
    url = hub.push_final(REPO, run_dir, private=True)

    repo = hub_stand_in.repos[REPO]
    assert repo.private
    assert url == f"{hub_stand_in.endpoint}/{REPO}/commit/{repo.sha}"
    expected = {**FINAL, "README.md": (run_dir / "README.md").read_bytes(), ".gitattributes": GITATTRIBUTES}
    assert repo.files == expected  # same names, same bytes
    assert repo.commits[-1].message == "final adapter, tokenizer and model card"


@pytest.mark.slow  # starts the local Hub server
def test_push_final_can_make_a_public_repo(hub_stand_in: HubStandIn, run_dir: Path) -> None:
    hub.push_final(REPO, run_dir, private=False)
    assert not hub_stand_in.repos[REPO].private


@pytest.mark.slow  # starts the local Hub server
def test_push_final_after_checkpoint_pushes_leaves_only_the_final_files(hub_stand_in: HubStandIn,
                                                                        run_dir: Path) -> None:
    """pricer's every_save push (pricer.push) puts a checkpoint's adapter and trainer state at the repo root;
    the final push replaces the adapter and removes what is not a final file. Optimizer state never leaves."""
    push_checkpoint(REPO, run_dir / "checkpoint-5", private=True)
    assert hub_stand_in.files(REPO)["adapter_model.safetensors"] == LOCAL_ONLY["checkpoint-5/adapter_model.safetensors"]
    assert "trainer_state.json" in hub_stand_in.files(REPO)

    hub.push_final(REPO, run_dir, private=True)

    repo = hub_stand_in.repos[REPO]
    assert set(repo.files) == {*FINAL, "README.md", ".gitattributes"} and repo.private
    assert repo.files["adapter_model.safetensors"] == FINAL["adapter_model.safetensors"]
    assert set(repo.commits[-1].deleted) == {"trainer_state.json"}
    sent = {path for commit in hub_stand_in.commits(REPO) for path in commit.added}
    assert not [path for path in sent if "optimizer" in path or path.startswith(("wandb", ".hydra", "checkpoint-"))]


@pytest.mark.slow  # starts the local Hub server
def test_model_card_front_matter_is_valid_hub_metadata(hub_stand_in: HubStandIn) -> None:
    text = card()
    meta = front_matter(text)
    assert meta["base_model"] == "meta-llama/Llama-3.1-8B"
    assert meta["datasets"] == ["ed-donner/pricer-data"]
    assert meta["library_name"] == "peft"
    assert "| `train_loss` | 1.235 |" in text and "| `train_steps` | `5` |" in text  # names as code: inert markdown
    assert CONFIG_YAML.rstrip() in text
    HfApi()._validate_yaml(text)  # the Hub-side check the client makes before committing a README


def test_model_card_front_matter_survives_awkward_names() -> None:
    """A local data dir or a base model path must not break the YAML."""
    meta = front_matter(hub.model_card("me/pricer-x", "/models/llama: 8b", "local files", "run", "a: 1", {}))
    assert meta["base_model"] == "/models/llama: 8b"
    assert meta["datasets"] == ["local files"]


@pytest.mark.slow  # starts the local Hub server
def test_fault_injection_knobs(hub_stand_in: HubStandIn, tmp_path: Path) -> None:
    """A dropped commit is retried by the client; a failed whoami is not (it raises)."""
    api = HfApi()
    api.create_repo(REPO, private=True)
    (tmp_path / "metrics.json").write_bytes(b"{}")
    hub_stand_in.fault_match, hub_stand_in.drop_first_n = "/commit/", 1
    api.upload_folder(repo_id=REPO, folder_path=tmp_path, commit_message="after a drop")
    assert [r.status for r in hub_stand_in.requests_to("/commit/")] == [0, 200]

    hub_stand_in.fault_match, hub_stand_in.fail_first_n, hub_stand_in.fail_status = "", 1, 500
    with pytest.raises(HfHubHTTPError) as err:
        hub.account_name()
    assert err.value.response.status_code == 500
    assert hub.account_name() == hub_stand_in.user
