"""Shared fixtures: the real config composed with Hydra's compose API, shrunk for CPU.

Nothing here reaches a network: the tiny model is built locally, W&B runs offline,
and the Hub is a local HTTP stand-in (tests/hub_server.py).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# One OpenMP thread per process, set before torch is imported here or in any subprocess: the suite
# runs as many pytest workers as cores (make test: -n auto), and torch's default of a thread per core
# in each of them made a 2-core host spin (a second process on the same 2 cores ran steps 50x slower).
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from slurm_cluster import slurm_cluster  # noqa: F401  (fixture)

from hub_server import hub_stand_in  # noqa: F401  (fixture)
from pricer import PACKAGE_DIR

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
# prediction settings as a run takes them from conf/train.yaml (the course's top-3, tokens per batch)
TOP_K = OmegaConf.load(CONF_DIR / "train.yaml").evaluation.top_k
BATCH_TOKENS = OmegaConf.load(CONF_DIR / "train.yaml").evaluation.batch_tokens
# A short, seeded demo run: enough steps for the loss to fall, small enough for CI.
SMOKE = [
    "experiment=demo",
    "training.max_steps=30",
    "training.logging_steps=5",
    "training.save_steps=15",
]


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No network, no real credentials, one tiny model per session."""
    os.environ["PRICER_CACHE"] = str(tmp_path_factory.mktemp("pricer-cache"))
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    for secret in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY"):
        os.environ.pop(secret, None)
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf-home"))  # no saved token either


@pytest.fixture(autouse=True)
def no_env_left_behind() -> Iterator[None]:
    """Every variable a test sets or changes in os.environ goes back as it was. wandb.init in this process
    exports WANDB_SERVICE (its service process's socket) and leaves it; every later subprocess of this worker
    (a training run, a sweep's SLURM jobs through sbatch) then logged through that service, outside its own
    process tree, and a test that signals a job's processes never reached it (seen in a CI run)."""
    before = dict(os.environ)
    yield
    for key in [key for key in os.environ if key not in before]:
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def no_log_handlers_left_behind() -> Iterator[None]:
    """An in-process command (Hydra's job logging) attaches handlers to the root logger that write to this
    test's captured output and to its run's train.log; left behind, a later test's log lines went to a closed
    stream ("--- Logging error --- ... I/O operation on closed file"). pytest's own capture handlers stay."""
    import logging

    from _pytest.logging import LogCaptureHandler

    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in before and not isinstance(handler, LogCaptureHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def compose_train(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """The composed config (without Hydra's own section) and the chosen presets."""
    from pricer.config_errors import library_errors_in_one_line

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"), library_errors_in_one_line():
        cfg = compose("train", overrides=overrides, return_hydra_config=True)  # refused as pricer.train says it
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if v is not None}
    with_hydra = OmegaConf.to_container(cfg, resolve=False)
    del with_hydra["hydra"]
    return OmegaConf.create(with_hydra), choices


# bitsandbytes decides per 4-bit layer, when the layer is built, whether to repack its weights for the
# AVX512-BF16 CPU kernels (`support_avx512bf16_for_cpu`, from `has_avx512bf16()`). These let a test
# build layers as either kind of host would, whatever this host's flags are.
CPU_KINDS = {"avx512bf16": True, "no-avx512bf16": False}


def decide_repack_as(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    import bitsandbytes.nn.modules

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: CPU_KINDS[kind])


@pytest.fixture(params=list(CPU_KINDS))
def cpu_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test twice: 4-bit layers built as on a CPU with AVX512-BF16, and as on one without."""
    decide_repack_as(monkeypatch, request.param)
    return request.param


@pytest.fixture(scope="session", autouse=True)
def forced_cpu_kind() -> None:
    """PRICER_TEST_CPU=avx512bf16 (or no-avx512bf16) builds every in-process 4-bit layer as that host
    would, so the whole suite can be run both ways on one machine (subprocesses keep the host's flags)."""
    kind = os.environ.get("PRICER_TEST_CPU")
    if not kind:
        yield
        return
    if kind not in CPU_KINDS:
        raise pytest.UsageError(f"PRICER_TEST_CPU={kind}: use one of {', '.join(CPU_KINDS)}")
    patch = pytest.MonkeyPatch()
    decide_repack_as(patch, kind)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    with open(PACKAGE_DIR / "sample_data" / "train.jsonl") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="session")
def tiny_model_dir(sample_texts: list[str]) -> Path:
    from pricer.tiny import build_tiny_model

    return build_tiny_model(Path(os.environ["PRICER_CACHE"]) / "tiny-llama", sample_texts)


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m pricer.train ...` as a user runs it, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pricer.train", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                       module: str = "pricer.train") -> subprocess.CompletedProcess:
    """`python -m pricer.train ...` run in this process (runpy runs the module as __main__, as -m does),
    from the repo root as run_cli does, with its exit code and output as run_cli returns them. For a
    command refused before it loads anything: a subprocess would spend ~6-10 s importing TRL, peft and
    bitsandbytes for validation before the same check. What only a fresh process shows (notices printed
    while those libraries are first imported) is left to the CLI subprocess tests (run_cli)."""
    import runpy

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [module, *args])
    monkeypatch.delitem(sys.modules, module, raising=False)  # imported by an earlier test: -m runs a fresh copy
    capsys.readouterr()  # only this command's output
    code, message = 0, ""
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:  # as the interpreter ends: an int is the code, anything else goes to stderr
        if isinstance(exit_.code, int) or exit_.code is None:
            code = exit_.code or 0
        else:
            code, message = 1, f"{exit_.code}\n"
    out = capsys.readouterr()
    return subprocess.CompletedProcess([module, *args], code, out.out, out.err + message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server of this test session's own (Debian's: `apt-get install -y postgresql`, done by
    .ci/run): initdb in a temp dir, a free port, stopped at the end. Its own, not the machine's cluster,
    so that pytest workers running at once never stop each other's server. Skipped, with the reason, only
    where PostgreSQL is not installed. Returns host:port; the superuser `postgres` logs in without a password."""
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdb:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    if os.geteuid() != 0:
        pytest.skip("the test PostgreSQL server runs as user postgres: starting it needs root")
    bindir, home = initdb[-1].parent, Path(tempfile.mkdtemp(prefix="pricer-pg-"))  # /tmp: user postgres reaches it
    shutil.chown(home, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_postgres = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_postgres, bindir / "initdb", "-D", home / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", home / "data", "-l", home / "server.log", "-w", "start",
                        "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"],
                       check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", home / "data", "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's PostgreSQL server, as an Optuna storage URL."""
    import psycopg2

    name = f"pricer_{uuid.uuid4().hex[:8]}"
    host, port = postgres_server.split(":")
    conn = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"postgresql+psycopg2://postgres@{postgres_server}/{name}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts the local Hub stand-in (an HTTP server) is `slow`, whether or not it says so."""
    for item in items:
        if "hub_stand_in" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
