"""Squeeze-and-Excitation that costs in time about what it costs in FLOPs.

SE adds under 1% FLOPs to a ResNet-50 but, written as ``x * gate(W2 relu(W1 mean(x)))`` in eager
PyTorch, it trains noticeably slower and holds more memory: autograd saves the scaled map's input
for the multiplication, and the backward pass makes several full passes over the feature map (the
two products of the multiplication's gradient, a separate reduction, and a broadcast for the
squeeze's gradient that is then accumulated into the first). These autograd Functions compute the
same function with fewer passes and fewer saved maps:

* ``se_scale(x, se)``, any insertion point: ``y = x * s``. Backward computes ``dL/ds`` as one
  spatial dot product and writes ``dL/dx = g * s + dL/dz / HW`` in a single ``addcmul`` (the squeeze's
  gradient is folded in instead of accumulated as a second full map). The excitation MLP, which works
  on (N, C, 1, 1) descriptors, is recomputed in backward from the saved descriptor.
* ``bn_se_add_relu(c, bn, se, identity)``, the standard position (Fig. 5): the residual branch's last
  BatchNorm, the SE scale, the residual addition and the ReLU, ``y = relu(se(bn(c)) + identity)``, as
  one Function. It saves only what a plain ResNet unit saves (the BatchNorm's input ``c`` and the
  output ``y``) plus per-channel vectors: the BatchNorm output ``bn(c)`` is never kept. Backward derives
  every reduction it needs (``dL/ds`` and both BatchNorm reductions) from two spatial sums of the
  masked gradient, and writes ``dL/dc`` in two elementwise passes.

Both are exact reformulations: tests compare them with the straightforward modules in float64
(``tests/test_fast_se.py``). They are used only when training with autograd on: under
``torch.jit.trace`` (fvcore's FLOP count, TorchScript and ONNX export), in eval mode, and for
NoSqueeze the modules run the straightforward code, so traced graphs and FLOP counts are unchanged.
Neither Function supports double backward.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:  # se.py imports this module
    from .se import SqueezeExcite


def _pool(x: torch.Tensor, squeeze: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The squeeze descriptor z (N, C, 1, 1) and, for max pooling, the flat argmax per channel."""
    if squeeze == "avg":
        return x.mean((2, 3), keepdim=True), None
    zmax, idx = F.adaptive_max_pool2d(x, 1, return_indices=True)
    if squeeze == "max":
        return zmax, idx
    return x.mean((2, 3), keepdim=True) + zmax, idx  # "avgmax": the sum of both descriptors


def _add_max_grad(grad_x: torch.Tensor, gz: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Add the max pool's gradient: gz goes to each channel's argmax position only."""
    n, c = gz.shape[:2]
    if grad_x.is_contiguous():  # scatter straight into the map: no second full-size tensor
        grad_x.view(n, c, -1).scatter_add_(2, idx.view(n, c, 1), gz.view(n, c, 1).to(grad_x.dtype))
        return grad_x
    # channels_last has no (N, C, HW) view; the dense backward is exact and rare enough
    return grad_x + torch.ops.aten.adaptive_max_pool2d_backward(gz.to(grad_x.dtype), grad_x, idx)


def _excite(se: "SqueezeExcite", z: torch.Tensor) -> torch.Tensor:
    """The excitation on a pooled (N, C, 1, 1) descriptor as matrix products: the same weights as
    the module's 1x1 convolutions (viewed as matrices), but 2-3x faster than convolution kernels
    on 1x1 maps on CPU."""
    h = torch.relu(F.linear(z.flatten(1), se.fc1.weight.flatten(1), se.fc1.bias))
    return se.gate(F.linear(h, se.fc2.weight.flatten(1), se.fc2.bias)).view_as(z)


def _autocast_state(t: torch.Tensor) -> tuple[str, bool, torch.dtype]:
    """The autocast state a forward ran under, so backward can recompute the MLP the same way."""
    dev = t.device.type
    return dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)


def _excitation_backward(se: "SqueezeExcite", z: torch.Tensor, grad_s: torch.Tensor, amp):
    """The scale s, dL/dz and dL/d(excitation parameters), recomputing the tiny MLP from z.

    Recomputing instead of saving s: at the last stage's 1x1 maps an (N, C) vector is as large as
    the map itself, so each saved vector would cost as much as a saved activation. The recompute
    re-enters the forward's autocast state (``amp``): backward runs with autocast off, and a
    half-precision z against float32 weights would otherwise fail (or differ from the forward)."""
    params = se.excitation_parameters()
    dev, enabled, dtype = amp
    with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
        zl = z.detach().requires_grad_(True)
        s = _excite(se, zl)
        grads = torch.autograd.grad(s, (zl, *params), grad_s.to(s.dtype))
    return s.detach(), grads[0], grads[1:]


class _Scale(torch.autograd.Function):
    """y = x * excitation(squeeze(x)) for pooled squeezes, with a two-pass backward."""

    @staticmethod
    def forward(ctx, x, se, *params):
        squeeze = se.choice.squeeze
        z, idx = _pool(x, squeeze)
        s = _excite(se, z)
        ctx.se, ctx.squeeze, ctx.amp = se, squeeze, _autocast_state(x)
        ctx.save_for_backward(x, z, idx)
        return x * s

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, z, idx = ctx.saved_tensors
        grad_s = (g * x).sum((2, 3), keepdim=True)
        s, gz, gparams = _excitation_backward(ctx.se, z, grad_s, ctx.amp)
        hw = x.shape[2] * x.shape[3]
        if ctx.squeeze == "max":
            grad_x = _add_max_grad(g * s, gz, idx)
        else:  # avg and avgmax: the average's share folded into the same pass as g * s
            grad_x = torch.addcmul(gz / hw, g, s)
            if ctx.squeeze == "avgmax":
                grad_x = _add_max_grad(grad_x, gz, idx)
        return (grad_x.to(x.dtype), None, *gparams)


def se_scale(x: torch.Tensor, se: "SqueezeExcite") -> torch.Tensor:
    """``se(x)`` for a pooled squeeze (avg, max, avgmax), with the fast backward."""
    return _Scale.apply(x, se, *se.excitation_parameters())


def _momentum(bn: nn.BatchNorm2d) -> float:
    """The running-statistics factor nn.BatchNorm2d would use for this step (and count the step)."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def _descriptor(cm, mu, invstd, gamma, beta) -> torch.Tensor:
    """z = mean_hw bn(c), from c's per-sample channel mean cm (so bn(c) need not be kept)."""
    return (gamma * invstd).view(1, -1, 1, 1) * (cm - mu.view(1, -1, 1, 1)) + beta.view(1, -1, 1, 1)


class _BNScaleAddReLU(torch.autograd.Function):
    """y = relu(se(bn(c)) + identity) for a training-mode BatchNorm and the avg squeeze.

    Notation in backward: a = gamma * invstd (per channel), xhat = (c - mu) * invstd, x = a (c - mu)
    + beta is the BatchNorm output (not saved), gp = dL/dy masked by y > 0, S1 = sum_hw gp and
    S2 = sum_hw gp * c (per sample and channel). Then dL/ds = a (S2 - mu S1) + beta S1, and with
    dL/dx = gp s + dL/dz / HW the BatchNorm's two reductions are
    dbeta = sum_n (s S1 + dz) and dgamma = invstd sum_n (s (S2 - mu S1) + dz (cm - mu)), cm the
    per-sample channel mean of c; dL/dc = a (dL/dx - dbeta / M - xhat dgamma / M), M = N H W.
    """

    @staticmethod
    def forward(ctx, c, identity, se, bn, gamma, beta, *params):
        x, mu, invstd = torch.native_batch_norm(
            c, gamma, beta, bn.running_mean, bn.running_var, True, _momentum(bn), bn.eps
        )
        cm = c.mean((2, 3), keepdim=True)
        z = _descriptor(cm, mu, invstd, gamma, beta).to(x.dtype)
        s = _excite(se, z)
        y = torch.addcmul(identity, x, s).relu_()
        ctx.se, ctx.identity_dtype, ctx.z_dtype, ctx.amp = se, identity.dtype, x.dtype, _autocast_state(c)
        # only cm per sample: z and s are recomputed from it in backward
        ctx.save_for_backward(c, y, cm, mu, invstd, gamma, beta)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        c, y, cm, mu, invstd, gamma, beta = ctx.saved_tensors
        n, _, h, w = c.shape
        hw, m = h * w, n * h * w
        # per-channel algebra in at least float32 (c may be half precision under autocast)
        acc = torch.promote_types(c.dtype, torch.float32)
        gp = torch.ops.aten.threshold_backward(g, y, 0)
        s1 = gp.sum((2, 3), keepdim=True, dtype=acc)
        s2 = (gp * c).sum((2, 3), keepdim=True, dtype=acc)
        mu4, inv4 = mu.view(1, -1, 1, 1).to(acc), invstd.view(1, -1, 1, 1).to(acc)
        gamma4, beta4 = gamma.view(1, -1, 1, 1).to(acc), beta.view(1, -1, 1, 1).to(acc)
        a = gamma4 * inv4
        centred = s2 - mu4 * s1  # sum_hw gp * (c - mu)
        z = _descriptor(cm, mu, invstd, gamma, beta).to(ctx.z_dtype)  # bitwise forward's z
        s, gz, gparams = _excitation_backward(ctx.se, z, a * centred + beta4 * s1, ctx.amp)
        gz, sf = gz.to(acc), s.to(acc)
        dbeta = (sf * s1 + gz).sum(0, keepdim=True)
        dgamma = inv4 * (sf * centred + gz * (cm.to(acc) - mu4)).sum(0, keepdim=True)
        r = -a * inv4 * dgamma / m
        q = a * gz / hw - a * dbeta / m - r * mu4
        grad_c = torch.addcmul(q.to(c.dtype), c, r.to(c.dtype)).addcmul_(gp, (a * sf).to(c.dtype))
        return (grad_c, gp.to(ctx.identity_dtype), None, None,
                dgamma.view(-1).to(gamma.dtype), dbeta.view(-1).to(beta.dtype), *gparams)


def can_fuse_tail(bn: nn.Module, se: nn.Module) -> bool:
    """Whether ``bn_se_add_relu`` applies: SE at the standard position with the avg squeeze, a
    BatchNorm in training mode with running statistics, autograd on and no tracer watching."""
    from .se import SqueezeExcite

    return (
        isinstance(se, SqueezeExcite)
        and se.fast_path_applies()
        and se.choice.squeeze == "avg"
        and isinstance(bn, nn.BatchNorm2d)
        and bn.training
        and bn.track_running_stats
        and bn.affine
    )


def bn_se_add_relu(c: torch.Tensor, bn: nn.BatchNorm2d, se: "SqueezeExcite", identity: torch.Tensor):
    """``relu(se(bn(c)) + identity)`` with the fused backward (see ``can_fuse_tail``)."""
    if c.numel() == c.shape[1]:
        # one value per channel: native_batch_norm would write NaN into running_var where
        # nn.BatchNorm2d raises "Expected more than 1 value per channel"; keep the latter
        return torch.relu(se(bn(c)) + identity)
    return _BNScaleAddReLU.apply(c, identity, se, bn, bn.weight, bn.bias, *se.excitation_parameters())


def set_fast_se(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every SE block of ``model`` between the fast path and the straightforward one."""
    from .se import SqueezeExcite

    for m in model.modules():
        if isinstance(m, SqueezeExcite):
            m.fused = bool(enabled)
    return model
