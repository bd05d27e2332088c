"""pricer.frozen4bit: bitsandbytes' 4-bit linear in two ops, with bitsandbytes' own results."""

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import _convert_weight_packed_for_cpu, dequantize_4bit

from pricer.frozen4bit import lean_4bit_linears
from pricer.modeling import keep_4bit_layout


def nf4_linear(nested: bool, dtype: torch.dtype, bias: bool) -> bnb.nn.Linear4bit:
    """A 4-bit linear as transformers builds one from a BitsAndBytesConfig (quantized on the move to a device)."""
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(96, 160, bias=bias, compute_dtype=dtype, compress_statistics=nested, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(160, 96), requires_grad=False, compress_statistics=nested, quant_type="nf4")
    if bias:
        layer.bias = torch.nn.Parameter(torch.randn(160), requires_grad=False)
    return layer.to("cpu")


def output_and_input_grad(layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    out = layer(x)
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "single-quant"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_lean_linear_computes_what_bitsandbytes_does(nested: bool, dtype: torch.dtype) -> None:
    """Forward and input gradient bit for bit, with the absmax expanded once instead of per call."""
    layer = nf4_linear(nested, dtype, bias=nested)  # a bias on two of the four, which Llama's linears lack
    assert layer.weight.quant_state.nested is nested
    x = torch.randn(3, 50, 96, dtype=dtype)
    want_out, want_grad = output_and_input_grad(layer, x)
    packed = layer.weight.detach().clone()

    assert lean_4bit_linears(layer) == 1
    got_out, got_grad = output_and_input_grad(layer, x)
    assert got_out.dtype == want_out.dtype == dtype and got_grad.dtype == dtype
    assert torch.equal(got_out, want_out) and torch.equal(got_grad, want_grad)
    assert torch.equal(layer.weight, packed) and layer.weight.grad is None, "the 4-bit weights stay frozen and packed"
    assert "lean_absmax" not in layer.state_dict(), "the fp32 absmax is rebuilt, never saved"


def test_eval_mode_keeps_bitsandbytes_forward(monkeypatch: pytest.MonkeyPatch, cpu_kind: str) -> None:
    """Decoding runs a few rows at a time, where bitsandbytes has fused 4-bit kernels: eval keeps its path
    (counted by a wrapper that still calls bitsandbytes). On either kind of CPU the weights stay in their
    quantized layout, so eval computes what training does, and training after an evaluation still gets
    its input gradient (bitsandbytes' AVX512-BF16 repack has no backward)."""
    layer = nf4_linear(True, torch.float32, bias=False)  # 96 inputs: bitsandbytes' repack would fail on them too
    assert layer.support_avx512bf16_for_cpu is (cpu_kind == "avx512bf16")
    want_weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    lean_4bit_linears(layer)
    calls, original = [], bnb.matmul_4bit
    monkeypatch.setattr(bnb, "matmul_4bit", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    x = torch.randn(2, 96)
    train_out = layer(x)
    assert calls == []
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer(x), train_out.detach())
    assert calls == [1]
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    layer.train()
    _, grad = output_and_input_grad(layer, x)
    assert grad is not None and grad.abs().sum() > 0
    assert torch.equal(dequantize_4bit(layer.weight.data, layer.weight.quant_state), want_weight)


@pytest.mark.parametrize("nested", [False, True], ids=["single-quant", "double-quant"])
def test_weights_bitsandbytes_repacked_come_back(nested: bool) -> None:
    """A layer whose weights bitsandbytes already repacked for its AVX512-BF16 kernels (its own conversion,
    pure torch, so it runs on any host) gets its quantized layout back: the same 4-bit codes, and weights
    within the absmax's bf16 rounding. bf16 keeps 8 significant bits, so the repack rounds each block's
    absmax by less than 2^-8 of itself; nf4 codes lie in [-1, 1], so no weight moves by more than that
    (measured: 0.0037 of the block's absmax)."""
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(128, 256, bias=False, compute_dtype=torch.float32, compress_statistics=nested, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(256, 128), requires_grad=False, compress_statistics=nested, quant_type="nf4")
    layer = layer.to("cpu")
    state = layer.weight.quant_state
    codes = layer.weight.data.clone()
    absmax = dequantize_4bit(torch.ones_like(codes), state).abs().reshape(-1, 64).amax(dim=1)  # per block
    want = dequantize_4bit(layer.weight.data, state)
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(layer.weight.data, state)
    assert layer.weight.quant_state.packing_format_for_cpu and layer.weight.shape != codes.shape

    assert keep_4bit_layout(layer) == 1
    got_state = layer.weight.quant_state
    assert not got_state.packing_format_for_cpu and layer.support_avx512bf16_for_cpu is False
    assert torch.equal(layer.weight.data, codes)
    got = dequantize_4bit(layer.weight.data, got_state)
    moved = (got - want).abs().reshape(-1, 64).amax(dim=1)  # per block of 64 weights
    assert (moved <= absmax * 2**-8).all()
    assert not torch.equal(got, want), "the bf16 absmax is a real rounding: this check can fail"


def test_lean_linear_compiles_in_one_graph() -> None:
    """Dynamo takes pricer's two custom ops whole (each has a fake kernel for shapes): no graph break."""
    layer = nf4_linear(True, torch.float32, bias=False)
    lean_4bit_linears(layer)
    x = torch.randn(4, 96)
    want_out, want_grad = output_and_input_grad(layer, x)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    got_out, got_grad = output_and_input_grad(compiled, x)
    torch.testing.assert_close(got_out, want_out, rtol=0, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)


def test_inductor_keeps_only_the_4bit_weights_for_the_backward() -> None:
    """Between forward and backward a compiled layer keeps the packed weights and the absmax, never the
    dequantized 16-bit weight. Traced dequantizes let inductor's partitioner keep it (run 10: +13 GiB at
    hardware=a100); the custom ops hide it. Inductor's CPU code generation needs the C++ compiler CI has."""
    layer = nf4_linear(True, torch.float32, bias=False)
    lean_4bit_linears(layer)
    compiled = torch.compile(layer, backend="inductor", dynamic=True)
    kept = []
    x = torch.randn(4, 96, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append((tuple(t.shape), t.dtype)) or t, lambda t: t):
        out = compiled(x)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert kept and (160, 96) not in [shape for shape, _ in kept], kept
    assert {dtype for _, dtype in kept} <= {torch.uint8, torch.float32} and len(kept) == 2, kept
