"""Liger's patch of transformers' Llama module stays inside the job that asked for it.

liger-kernel's patch itself is plain Python (it rewrites modeling_llama's globals), so it runs
here with the real library; only the Triton kernels need CUDA, and no test here runs them.
"""

import functools
import json
from pathlib import Path

import pytest

from pricer import modeling, speedups

liger = pytest.importorskip("liger_kernel.transformers", reason="liger-kernel not installed (make install puts it in)")


def build(model_dir: Path):
    tokenizer = modeling.load_tokenizer(str(model_dir), None, False)
    return modeling.load_model(str(model_dir), None, False, "sdpa", {}, "float32", "cpu", tokenizer.pad_token_id)


def kinds(model) -> set[str]:
    """The classes (as the model names them) of its norms and MLPs."""
    layer = model.model.layers[0]
    return {layer.input_layernorm.__class__.__name__, layer.mlp.__class__.__name__, model.model.norm.__class__.__name__}


def test_a_liger_job_does_not_leak_into_the_next_job(tiny_model_dir: Path) -> None:
    """Two jobs of one in-process --multirun: job 1 with hardware.liger=true (the real liger patch, as on a
    GPU), job 2 without: job 2's model and transformers' Llama module are transformers' own."""
    from transformers.models.llama import modeling_llama

    from pricer.train import end_job

    originals = {name: getattr(modeling_llama, name) for name in speedups.LIGER_LLAMA_NAMES}
    assert speedups.apply_liger("cuda")  # job 1, as pricer.modeling.load_for_run calls it: before the model is built
    patched = {name: getattr(modeling_llama, name) for name in speedups.LIGER_LLAMA_NAMES}
    assert all(patched[name] is not originals[name] for name in originals), "liger patched nothing"
    assert kinds(build(tiny_model_dir)) == {"LigerRMSNorm", "LigerSwiGLUMLP"}
    end_job("none", "finished")  # job 1 ends as pricer.train ends it

    # job 2, hardware.liger=false: nothing calls into Liger
    assert {name: getattr(modeling_llama, name) for name in speedups.LIGER_LLAMA_NAMES} == originals
    assert kinds(build(tiny_model_dir)) == {"LlamaRMSNorm", "LlamaMLP"}
    assert not speedups.restore_liger(), "nothing left to restore"


def test_the_patch_is_undone_when_the_job_fails(tmp_path: Path) -> None:
    """A job that fails after the patch: pricer.train's end_job runs from claim.recording_status's finally."""
    from transformers.models.llama import modeling_llama

    from pricer.claim import recording_status
    from pricer.train import end_job

    original = modeling_llama.LlamaRMSNorm
    with pytest.raises(RuntimeError, match="job failed"), recording_status(tmp_path, functools.partial(end_job, "none")):
        speedups.apply_liger("cuda")
        assert modeling_llama.LlamaRMSNorm is not original
        raise RuntimeError("job failed")
    assert modeling_llama.LlamaRMSNorm is original
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"


def test_apply_liger_then_restore_as_train_calls_them() -> None:
    """The two calls for an entrypoint that cannot use the context manager: apply before the model is
    built, restore when the job ends; on a CPU apply is a no-op that patches nothing."""
    from transformers.models.llama import modeling_llama

    original = modeling_llama.apply_rotary_pos_emb
    assert not speedups.apply_liger("cpu") and modeling_llama.apply_rotary_pos_emb is original
    assert speedups.apply_liger("cuda") and modeling_llama.apply_rotary_pos_emb is not original
    speedups.apply_liger("cuda")  # a second apply in the same job must not record Liger's as the original
    assert speedups.restore_liger() and modeling_llama.apply_rotary_pos_emb is original
