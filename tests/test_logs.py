"""pricer.logs on real log records: transformers', huggingface_hub's and W&B's own loggers and handlers.

Each test emits a token through a library's logger (as a library error would) and reads what the
library's handlers wrote. transformers' loggers do not propagate to the root and huggingface_hub's
write to a stderr handler of their own, so a filter on the root's handlers alone would miss both.
"""

import io
import logging
from contextlib import contextmanager
from pathlib import Path

import pytest

from pricer import logs

HF = "hf_FakeTokenForTheTest0123456789abcdefgh"
WANDB = "wandbfake0123456789abcdef0123456789abcdef"


@pytest.fixture
def pristine_logging(monkeypatch: pytest.MonkeyPatch):
    """Fake tokens in the environment; the record factory and the root's handlers as before any
    pricer command ran (an earlier test may have installed pricer's), restored afterwards."""
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("WANDB_API_KEY", WANDB)
    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # as Hydra's console and file handlers
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)
    logging.setLogRecordFactory(factory)


@contextmanager
def library_output(logger_name: str):
    """The library's own stderr handler, pointed at a buffer while the block runs: what its users see.

    Its exact class: pytest (9.2 and later) also attaches its capture handlers, subclasses of
    StreamHandler, to loggers that do not propagate while a test runs."""
    logger = logging.getLogger(logger_name)
    (handler,) = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    buffer = io.StringIO()
    stream = handler.setStream(buffer)
    try:
        yield logger, buffer
    finally:
        handler.setStream(stream)


def test_a_token_in_a_transformers_warning_is_masked(pristine_logging, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.utils import logging as transformers_logging

    logger = transformers_logging.get_logger("transformers.trainer")
    with library_output("transformers") as (library_logger, buffer):
        # transformers' own setting (an earlier test in this process, e.g. through Hydra or caplog, may have
        # turned propagation on): the record reaches its own handler only, never a root handler's filter
        monkeypatch.setattr(library_logger, "propagate", False)
        logs.install_log_filters()
        logger.warning("could not push to https://huggingface.co/me/repo (token %s)", HF)
    written = buffer.getvalue()
    assert "could not push" in written and HF not in written and logs.MASK in written


def test_a_token_in_a_huggingface_hub_error_is_masked_on_every_handler(pristine_logging) -> None:
    from huggingface_hub.utils import logging as hub_logging

    logger = hub_logging.get_logger("huggingface_hub.hf_api")
    with library_output("huggingface_hub") as (_, buffer):
        logs.install_log_filters()
        try:
            raise ValueError(f"401 Client Error for url https://huggingface.co/api/whoami-v2?token={HF}")
        except ValueError:
            logger.exception("whoami failed with %s", f"Bearer {HF}")
    for written in (buffer.getvalue(), pristine_logging.getvalue()):  # its own handler, and the root's (it propagates)
        assert "whoami failed" in written and "401 Client Error" in written, written
        assert HF not in written and logs.MASK in written


@pytest.mark.slow  # wandb.init starts W&B's local service process
def test_a_token_logged_during_a_wandb_run_stays_out_of_its_files(pristine_logging, tmp_path: Path) -> None:
    """W&B (offline) writes its logger's records to debug.log in the run's dir, through a file handler
    it adds at init."""
    import wandb

    logs.install_log_filters()
    run = wandb.init(project="pricer-test", mode="offline", dir=str(tmp_path))
    try:
        logging.getLogger("wandb").info("settings: api_key=%s", WANDB)
        logging.getLogger("wandb").info("marker line")
    finally:
        run.finish()
    written = b"".join(path.read_bytes() for path in tmp_path.rglob("debug*.log"))
    assert b"marker line" in written and b"settings: api_key=" in written, "W&B's file handler wrote the records"
    assert WANDB.encode() not in written


def test_the_next_job_masks_its_own_tokens(pristine_logging, monkeypatch: pytest.MonkeyPatch) -> None:
    """A --multirun job installs the filters again: a token that changed between jobs is masked too."""
    second = "hf_TheSecondJobsToken0123456789"
    logs.install_log_filters()
    factory = logging.getLogRecordFactory()
    monkeypatch.setenv("HF_TOKEN", second)
    logs.install_log_filters()
    assert logging.getLogRecordFactory() is factory, "installed once, not wrapped again per job"
    logging.getLogger("pricer").warning("job 2 token %s", second)
    written = pristine_logging.getvalue()
    assert "job 2 token" in written and second not in written


def test_the_cpu_kernel_notices_are_dropped_and_other_records_of_those_loggers_kept(caplog) -> None:
    """On an AVX512-BF16 host, importing bitsandbytes offline makes `kernels` skip its publisher check
    for bitsandbytes' CPU matmul, then bitsandbytes says it found no kernel: both notices are dropped
    (that kernel is never called), whatever the host; anything else those loggers say still shows."""
    from kernels._internals.hf_hub import _check_trust_remote_code

    logs.drop_known_noise()
    with caplog.at_level(logging.INFO):
        _check_trust_remote_code("kernels-community/quantization-bitsandbytes", True, False)  # the real call
        _check_trust_remote_code("someone/another-kernel", True, False)
        cpu_ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
        cpu_ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s", "offline")
        cpu_ops.warning("another bitsandbytes notice")
    written = "\n".join(r.getMessage() for r in caplog.records)
    assert "someone/another-kernel" in written and "another bitsandbytes notice" in written
    assert "quantization-bitsandbytes" not in written and "gemm_4bit_forward" not in written


def test_ligers_optional_backend_notices_are_dropped_and_its_other_records_kept(caplog, monkeypatch) -> None:
    """liger-kernel's real discovery of its 'rope' backends: its CuTe-DSL and Ascend variants cannot
    be imported here (nor on pricer's GPU machines), the Triton kernel is used; those notices are
    dropped, the failures stay listed by the library, and anything else its registry logs shows."""
    registry = pytest.importorskip("liger_kernel.backends.registry", reason="make install puts liger-kernel in")
    monkeypatch.delitem(registry._DISCOVERED, "rope", raising=False)  # discover again, even if a test did
    monkeypatch.delitem(registry._DISCOVERY_EVENTS, "rope", raising=False)
    logs.drop_known_noise()
    with caplog.at_level(logging.INFO):
        registry._discover("rope")  # what liger-kernel runs at the op's first call
        registry.logger.warning("another liger notice")
    assert registry.get_discovery_failures(), "nothing failed to import: the test shows nothing"
    written = "\n".join(r.getMessage() for r in caplog.records)
    assert "another liger notice" in written and "could not be imported" not in written
