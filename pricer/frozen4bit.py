"""Frozen 4-bit linears in two ops each: dequantize, then matmul (hardware.lean_4bit=true).

bitsandbytes' Linear4bit computes the same in training (above 1,536 rows it dequantizes
the weight, then calls F.linear), bit for bit, but through ~290 us of host time per call
on the H200 (the matmul's launch included) and, with double quantization, two more
kernels per call: a dequantize of the 8-bit absmax and an add (890 of the 5,117 kernels
of a batch-36 step, BENCHMARKS.md profile 10). Here the absmax is expanded to fp32 once (+0.4 GiB for Llama
3.1 8B) and each call is one dequantize and one matmul, forward and backward. Side by
side it measured 1.10x and 0.86x on the host-bound batch-16 step with compiled layers
(runs 14, 15) and 0.98-1.01x at batch 36 (runs 10, 12, 14): no consistent gain, so
presets leave it off and users opt in.
"""

import logging

import torch
from bitsandbytes.functional import dequantize_blockwise
from bitsandbytes.nn import Linear4bit

from pricer.modeling import keep_4bit_layout, unwrap_peft

log = logging.getLogger("pricer")


def dequantize(packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: list[int],
               dtype: torch.dtype) -> torch.Tensor:
    return torch.ops.bitsandbytes.dequantize_4bit.default(packed, absmax, blocksize, quant_type, shape, dtype)


# Custom ops rather than an autograd.Function: a compiled graph sees each as one opaque call, so the
# 16-bit weight never appears in it. With the two dequantizes traced, inductor's partitioner computed
# the backward's in the forward and kept its output for the backward: +13 GiB for Llama 3.1 8B
# (BENCHMARKS.md run 10; tests/test_frozen4bit.py).
@torch.library.custom_op("pricer::frozen_4bit_linear", mutates_args=())
def frozen_4bit_linear(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str,
                       shape: list[int], bias: torch.Tensor | None) -> torch.Tensor:
    """x @ W.T + bias for a frozen 4-bit W, dequantized into x's dtype and dropped after the matmul."""
    return torch.nn.functional.linear(x, dequantize(packed, absmax, blocksize, quant_type, shape, x.dtype), bias)


@torch.library.custom_op("pricer::frozen_4bit_linear_input_grad", mutates_args=())
def frozen_4bit_linear_input_grad(grad_output: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor,
                                  blocksize: int, quant_type: str, shape: list[int]) -> torch.Tensor:
    """grad_output @ W: W is dequantized again, as bitsandbytes does, so it never outlives a call."""
    return grad_output @ dequantize(packed, absmax, blocksize, quant_type, shape, grad_output.dtype)


@frozen_4bit_linear.register_fake
def _(x, packed, absmax, blocksize, quant_type, shape, bias):
    return x.new_empty((*x.shape[:-1], shape[0]))


@frozen_4bit_linear_input_grad.register_fake
def _(grad_output, packed, absmax, blocksize, quant_type, shape):
    return grad_output.new_empty((*grad_output.shape[:-1], shape[1]))


def _keep_weights(ctx, inputs, output) -> None:
    _, packed, absmax, *quant, _ = inputs
    ctx.save_for_backward(packed, absmax)
    ctx.quant = quant


def _input_grad(ctx, grad_output):
    packed, absmax = ctx.saved_tensors
    return frozen_4bit_linear_input_grad(grad_output, packed, absmax, *ctx.quant), None, None, None, None, None, None


frozen_4bit_linear.register_autograd(_input_grad, setup_context=_keep_weights)


def lean_forward(self: Linear4bit, x: torch.Tensor) -> torch.Tensor:
    """Linear4bit.forward in training: inputs cast to the compute dtype, outputs back to the input's.
    In eval mode bitsandbytes' own forward runs: for a few rows (decoding) it has fused kernels."""
    if not self.training:
        return Linear4bit.forward(self, x)
    dtype = x.dtype
    state = self.weight.quant_state
    x = x.to(self.compute_dtype or dtype)
    bias = None if self.bias is None else self.bias.to(x.dtype)
    out = frozen_4bit_linear(x, self.weight.view(-1, 1), self.lean_absmax, state.blocksize, state.quant_type,
                             list(state.shape), bias)
    return out.to(dtype)


def lean_4bit_linears(model) -> int:
    """Give each 4-bit linear of the (PEFT-wrapped) model the two-op forward; returns how many.

    The 4-bit weights and their quant state stay as they are (saving and merging see
    bitsandbytes' layers); the fp32 absmax is a buffer that is never saved.
    """
    keep_4bit_layout(model)  # the two ops read bitsandbytes' quantized layout, never its CPU-packed one
    count = 0
    for module in unwrap_peft(model).modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if not isinstance(module, Linear4bit) or state is None:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue  # a trained bias needs its gradient, which the frozen matmul does not give
        absmax = dequantize_blockwise(state.absmax, state.state2) + state.offset if state.nested else state.absmax
        module.register_buffer("lean_absmax", absmax.to(torch.float32), persistent=False)
        module.forward = lean_forward.__get__(module)
        count += 1
    log.info("4-bit linears: %d run as one dequantize and one matmul (absmax expanded to fp32 once)", count)
    return count
