"""Squeeze-and-Excitation that costs in time about what it costs in FLOPs.

SE adds under 1% FLOPs to a ResNet-50 but, written as ``x * gate(W2 relu(W1 mean(x)))`` in eager
PyTorch, it trains noticeably slower and holds more memory: autograd saves the scaled map's input
for the multiplication, and the backward pass makes several full passes over the feature map (the
two products of the multiplication's gradient, a separate reduction, and a broadcast for the
squeeze's gradient that is then accumulated into the first). These autograd Functions compute the
same function with fewer passes and fewer saved maps:

* ``se_scale(x, se)``, any insertion point: ``y = x * s``. Backward computes ``dL/ds`` as one
  spatial dot product and writes ``dL/dx = g * s + dL/dz / HW`` in a single ``addcmul`` (the squeeze's
  gradient is folded in instead of accumulated as a second full map).
* ``bn_se_add_relu(c, bn, se, identity)``, the standard position (Fig. 5): the residual branch's last
  BatchNorm, the SE scale, the residual addition and the ReLU, ``y = relu(se(bn(c)) + identity)``, as
  one Function. It saves only what a plain ResNet unit saves (the BatchNorm's input ``c`` and the
  output ``y``) plus per-sample vectors: the BatchNorm output ``bn(c)`` is never kept. Backward derives
  every reduction it needs (``dL/ds`` and both BatchNorm reductions) from two spatial sums of the
  masked gradient, and writes ``dL/dc`` in two elementwise passes. On CPU it also computes the
  BatchNorm statistics itself, from the per-sample means the squeeze needs anyway.

In inference (``torch.inference_mode``, eval mode), ``bn_se_inference(c, bn, se)`` computes
``se(bn(c))`` at the standard position with the scale folded into the BatchNorm's affine parameters:
the squeeze reads ``c`` once, and the scaled BatchNorm writes the map once, as a plain unit's does.

In all three, the excitation MLP runs as matrix products on (N, C) descriptors and its backward is
written out (four products, no autograd graph); only the (N, C/r) hidden activation is saved, and
the scale s is recomputed from it with one product.

All three are exact reformulations: tests compare them with the straightforward modules in float64
(``tests/test_fast_se.py``). They are used only when training with autograd on: under
``torch.jit.trace`` (fvcore's FLOP count, TorchScript and ONNX export), in eval mode outside
inference mode (the training loop's validation), and for NoSqueeze the modules run the
straightforward code (eval mode: with the excitation as matrix products), so traced graphs, FLOP
counts and validation numerics are unchanged.
Neither Function supports double backward.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


class SqueezeExcite(Protocol):
    """What the fused paths read of an SE block: the interface ``se_nas.nn.se.SqueezeExcite``
    implements. It is stated here, on the lower module, so that se.py imports this one and never the
    reverse."""

    fc1: nn.Conv2d
    fc2: nn.Conv2d
    choice: Any  # the block's StageSE
    squeeze: Callable[[torch.Tensor], torch.Tensor]
    gate: Callable[[torch.Tensor], torch.Tensor]

    def fast_path_applies(self) -> bool: ...

    def excitation_parameters(self) -> list[torch.Tensor]: ...


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


def _sum_hw(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-sample channel sums over the spatial dimensions, (N, C, H, W) -> (N, C).

    1x1 maps need no reduction at all. On CPU, a contiguous float map with few positions per channel
    is summed as a matrix-vector product: PyTorch's reduction kernel is slow when the reduced inner
    dimension is short (0.41 ms against 0.11 ms for a (64, 1024, 2, 2) map, one thread)."""
    n, c, h, w = t.shape
    if h * w == 1:
        return t.reshape(n, c).to(dtype)
    if t.device.type == "cpu" and h * w <= 16 and t.dtype == dtype and t.is_contiguous():
        return torch.mv(t.view(n * c, h * w), t.new_ones(h * w)).view(n, c)
    return t.sum((2, 3), dtype=dtype)


def excite(se: "SqueezeExcite", z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The excitation on an (N, C) descriptor: the hidden activation h and the scale s.

    Matrix products with the module's 1x1-convolution weights viewed as matrices: 2-3x faster than
    convolution kernels on 1x1 maps on CPU."""
    h = F.linear(z, se.fc1.weight.flatten(1), se.fc1.bias).relu_()
    return h, se.gate(F.linear(h, se.fc2.weight.flatten(1), se.fc2.bias))


def _autocast_state(t: torch.Tensor) -> tuple[str, bool, torch.dtype]:
    """The autocast state a forward ran under, so backward can recompute the MLP the same way."""
    dev = t.device.type
    return dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)


# dL/du of each gate s = gate(u), from the upstream gradient, u and s (all in one dtype)
_GATE_BACKWARD = {
    "sigmoid": lambda g, u, s: torch.ops.aten.sigmoid_backward(g, s),
    "tanh": lambda g, u, s: torch.ops.aten.tanh_backward(g, s),
    "relu": lambda g, u, s: torch.ops.aten.threshold_backward(g, s, 0),
    "hardsigmoid": lambda g, u, s: torch.ops.aten.hardsigmoid_backward(g, u),
}


def _gate_backward(se: "SqueezeExcite", g: torch.Tensor, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    rule = _GATE_BACKWARD.get(se.choice.gate)
    if rule is not None:
        return rule(g, u, s)
    with torch.enable_grad():  # a gate added to GATES without a rule above: let autograd derive it
        ul = u.detach().requires_grad_(True)
        return torch.autograd.grad(se.gate(ul), ul, g)[0]


def _excitation_backward(se: "SqueezeExcite", z: torch.Tensor, h: torch.Tensor, grad_s: torch.Tensor, amp):
    """The scale s, dL/dz and dL/d(excitation parameters), by hand from the saved (N, C/r) hidden
    activation h: one matrix product recomputes s, four give the gradients.

    s is recomputed rather than saved: at the last stage's 1x1 maps an (N, C) vector is as large as
    the map itself, while h is r times smaller. The recompute re-enters the forward's autocast state
    (``amp``; backward runs with autocast off) so that s is the forward's s bit for bit; the
    gradients are computed in at least float32. Returns (s, dL/dz, parameter gradients) with the
    parameters in ``se.excitation_parameters()`` order."""
    w1, w2 = se.fc1.weight, se.fc2.weight
    dev, enabled, dtype = amp
    with torch.autocast(dev, dtype=dtype, enabled=enabled):
        u = F.linear(h, w2.flatten(1), se.fc2.bias)
        s = se.gate(u)
    acc = torch.promote_types(s.dtype, torch.float32)
    gu = _gate_backward(se, grad_s.to(acc), u.to(acc), s.to(acc))
    ha = h.to(acc)
    gh = torch.ops.aten.threshold_backward(gu.mm(w2.flatten(1).to(acc)), ha, 0)
    grads = [gh.t().mm(z.to(acc)).view_as(w1)]
    if se.fc1.bias is not None:
        grads.append(gh.sum(0))
    grads.append(gu.t().mm(ha).view_as(w2))
    if se.fc2.bias is not None:
        grads.append(gu.sum(0))
    params = se.excitation_parameters()
    return s, gh.mm(w1.flatten(1).to(acc)), [gp.to(p.dtype) for gp, p in zip(grads, params, strict=True)]


def excitation(se: "SqueezeExcite", x: torch.Tensor) -> torch.Tensor:
    """``se.excitation(x)`` for a pooled squeeze with plain autograd-capable ops: the (N, C, 1, 1)
    scale, with the MLP as matrix products (what inference runs)."""
    z = se.squeeze(x)
    return excite(se, z.flatten(1))[1].view_as(z)


class _Scale(torch.autograd.Function):
    """y = x * excitation(squeeze(x)) for pooled squeezes, with a two-pass backward."""

    @staticmethod
    def forward(ctx, x, se, *params):
        squeeze = se.choice.squeeze
        z, idx = _pool(x, squeeze)
        z = z.flatten(1)
        h, s = excite(se, z)
        ctx.se, ctx.squeeze, ctx.amp = se, squeeze, _autocast_state(x)
        ctx.save_for_backward(x, z, h, idx)
        return x * s.view(*s.shape, 1, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, z, h, idx = ctx.saved_tensors
        n, c, hh, ww = x.shape
        grad_s = _sum_hw(g * x, torch.promote_types(x.dtype, torch.float32))
        s, gz, gparams = _excitation_backward(ctx.se, z, h, grad_s, ctx.amp)
        s, gz = s.view(n, c, 1, 1).to(g.dtype), gz.view(n, c, 1, 1)
        if ctx.squeeze == "max":
            grad_x = _add_max_grad(g * s, gz, idx)
        else:  # avg and avgmax: the average's share folded into the same pass as g * s
            grad_x = torch.addcmul((gz / (hh * ww)).to(g.dtype), g, s)
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
    """z = mean_hw bn(c), (N, C), from c's per-sample channel mean cm (so bn(c) need not be kept)."""
    return gamma * invstd * (cm - mu) + beta


def _own_batch_norm(c: torch.Tensor) -> bool:
    """Whether the fused tail computes BatchNorm's statistics itself (CPU, float32/float64).

    It needs c's per-sample channel means anyway (for the squeeze); their mean over the batch is
    BatchNorm's mean, and c - mu, needed for the variance, is reused as the output buffer. This
    also avoids PyTorch's CPU BatchNorm kernel, which is slow on small contiguous maps (2.3 ms for a
    (64, 256, 8, 8) forward against 0.6 ms in channels_last, one thread). On CUDA the cuDNN kernel
    does it all in one launch, so it is kept there, and for half precision."""
    return c.device.type == "cpu" and c.dtype in (torch.float32, torch.float64)


def _batch_norm_stats(c: torch.Tensor, cm: torch.Tensor, bn: nn.BatchNorm2d):
    """Training-mode BatchNorm statistics of c from its (N, C) per-sample means cm, with the running
    statistics updated as nn.BatchNorm2d does. Returns (mu, invstd, c - mu); the variance is the
    two-pass one, like PyTorch's."""
    n, ch, hh, ww = c.shape
    m = n * hh * ww
    mu = cm.mean(0)
    d = c - mu.view(1, ch, 1, 1).to(c.dtype)
    if hh * ww > 16:  # a norm reads d once; d * d writes a temporary first (1.6x slower on 56x56 maps)
        var = torch.linalg.vector_norm(d, dim=(2, 3), dtype=cm.dtype).square_().sum(0) / m
    else:
        var = _sum_hw(d * d, cm.dtype).sum(0) / m
    momentum = _momentum(bn)
    with torch.no_grad():  # unbiased variance in the running estimate, as nn.BatchNorm2d
        bn.running_mean.mul_(1 - momentum).add_(mu.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_((var * (m / (m - 1))).to(bn.running_var.dtype), alpha=momentum)
    return mu, torch.rsqrt(var + bn.eps), d


class _BNScaleAddReLU(torch.autograd.Function):
    """y = relu(se(bn(c)) + identity) for a training-mode BatchNorm and the avg squeeze.

    Notation in backward: a = gamma * invstd (per channel), xhat = (c - mu) * invstd, x = a (c - mu)
    + beta is the BatchNorm output (not saved), gp = dL/dy masked by y > 0, S1 = sum_hw gp and
    S2 = sum_hw gp * c (per sample and channel). Then dL/ds = a (S2 - mu S1) + beta S1, and with
    dL/dx = gp s + dL/dz / HW the BatchNorm's two reductions are
    dbeta = sum_n (s S1 + dz) and dgamma = invstd sum_n (s (S2 - mu S1) + dz (cm - mu)), cm the
    per-sample channel mean of c; dL/dc = a (dL/dx - dbeta / M - xhat dgamma / M), M = N H W.
    Per-sample and per-channel quantities are (N, C) and (C,) tensors, in at least float32.
    """

    @staticmethod
    def forward(ctx, c, identity, se, bn, gamma, beta, *params):
        n, ch, hh, ww = c.shape
        cm = _sum_hw(c, torch.promote_types(c.dtype, torch.float32)) / (hh * ww)
        if _own_batch_norm(c):
            mu, invstd, d = _batch_norm_stats(c, cm, bn)
            a = gamma * invstd
            z = _descriptor(cm, mu, invstd, gamma, beta)
            h, s = excite(se, z)
            # s * bn(c) + identity = identity + d * (a s) + beta s, bn(c) = a (c - mu) + beta, written into d
            y = torch.addcmul(identity, d, (a * s).view(n, ch, 1, 1), out=d)
            y.add_((beta * s).view(n, ch, 1, 1)).relu_()
        else:
            x, mu, invstd = torch.native_batch_norm(
                c, gamma, beta, bn.running_mean, bn.running_var, True, _momentum(bn), bn.eps
            )
            z = _descriptor(cm, mu, invstd, gamma, beta).to(x.dtype)
            h, s = excite(se, z)
            y = torch.addcmul(identity, x, s.view(n, ch, 1, 1)).relu_()
        ctx.se, ctx.identity_dtype, ctx.z_dtype, ctx.amp = se, identity.dtype, z.dtype, _autocast_state(c)
        # per sample only cm and the hidden activation: z and s are recomputed from them in backward
        ctx.save_for_backward(c, y, cm, h, mu, invstd, gamma, beta)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        c, y, cm, h, mu, invstd, gamma, beta = ctx.saved_tensors
        n, ch, hh, ww = c.shape
        hw, m = hh * ww, n * hh * ww
        z = _descriptor(cm, mu, invstd, gamma, beta).to(ctx.z_dtype)  # bitwise the forward's z
        # per-sample and per-channel algebra in at least float32 (c may be half precision)
        acc, param_dtype = cm.dtype, gamma.dtype
        mu, invstd, gamma, beta = (t.to(acc) for t in (mu, invstd, gamma, beta))
        gp = torch.ops.aten.threshold_backward(g, y, 0)
        s1, s2 = _sum_hw(gp, acc), _sum_hw(gp * c, acc)
        a = gamma * invstd
        centred = s2 - mu * s1  # sum_hw gp * (c - mu)
        s, gz, gparams = _excitation_backward(ctx.se, z, h, a * centred + beta * s1, ctx.amp)
        s = s.to(acc)
        dbeta = (s * s1 + gz).sum(0)
        dgamma = invstd * (s * centred + gz * (cm - mu)).sum(0)
        r = a * invstd * dgamma / -m
        q = a * gz / hw - (a * dbeta / m + r * mu)
        grad_c = torch.addcmul(q.view(n, ch, 1, 1).to(c.dtype), c, r.view(1, ch, 1, 1).to(c.dtype))
        grad_c.addcmul_(gp, (a * s).view(n, ch, 1, 1).to(c.dtype))
        return (grad_c, gp.to(ctx.identity_dtype), None, None,
                dgamma.to(param_dtype), dbeta.to(param_dtype), *gparams)


def _is_se(m: nn.Module) -> bool:
    """Whether ``m`` is an SE block, told by the interface this module reads (``SqueezeExcite`` above):
    one attribute look-up, where ``isinstance`` against a runtime protocol would check them all on
    every forward pass."""
    return callable(getattr(m, "fast_path_applies", None))


def can_fuse_tail(bn: nn.Module, se: nn.Module) -> bool:
    """Whether ``bn_se_add_relu`` applies: SE at the standard position with the avg squeeze, a
    BatchNorm in training mode with running statistics, autograd on and no tracer watching."""
    return (
        _is_se(se)
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


def can_fold_bn_into_se(bn: nn.Module, se: nn.Module) -> bool:
    """Whether ``bn_se_inference`` applies: an eval-mode BatchNorm (running statistics, affine)
    straight before an avg-squeeze SE block, under ``torch.inference_mode`` and no tracer.

    Only inference mode: the training loop's validation (``torch.no_grad``) keeps the unfused
    numerics bit for bit, so searches choose what they chose; timing (``se-nas latency profile``,
    ``compare``) and deployment run under inference mode. Tracers (ONNX, TorchScript, fvcore) see
    the module's own convolutions, as everywhere here."""
    return (
        _is_se(se)
        and se.fast_excitation_applies()
        and se.choice.squeeze == "avg"
        and torch.is_inference_mode_enabled()
        and isinstance(bn, nn.BatchNorm2d)
        and not bn.training
        and bn.affine
        and bn.running_mean is not None
    )


def bn_se_inference(c: torch.Tensor, bn: nn.BatchNorm2d, se: "SqueezeExcite") -> torch.Tensor:
    """``se(bn(c))`` in inference, the SE scale folded into the BatchNorm (see ``can_fold_bn_into_se``).

    An eval-mode BatchNorm is a per-channel affine map, so the squeeze needs no BatchNorm output:
    ``mean_hw bn(c) = a (mean_hw c - mu) + beta``, ``a = gamma / sqrt(var + eps)``. The scale then
    rides on the BatchNorm itself, with ``gamma s`` and ``beta s`` as its affine parameters:
    ``s bn(c)`` in the one pass over the map the BatchNorm makes anyway. So SE adds to the unit only
    one read of the map (the mean) and the excitation's matrix-vector products; the separate
    multiplication (a read and a write of the map, 0.5 ms over SE-ResNet-50's 16 units at batch 1,
    one thread, plus the allocation) is gone. Batches above one are folded as one (1, N C, H, W)
    BatchNorm, which needs a contiguous map; other layouts and half precision run unfused."""
    n, ch, hh, ww = c.shape
    if c.dtype not in (torch.float32, torch.float64) or (n > 1 and not c.is_contiguous()):
        return se(bn(c))
    mu, var = bn.running_mean, bn.running_var
    # the descriptor through the same BatchNorm: one call where the formula takes five
    z = F.batch_norm(c.mean((2, 3)), mu, var, bn.weight, bn.bias, False, 0.0, bn.eps)
    s = excite(se, z)[1]
    weight, bias = (bn.weight * s).flatten(), (bn.bias * s).flatten()
    if n > 1:
        mu, var = mu.repeat(n), var.repeat(n)
    return F.batch_norm(c.view(1, n * ch, hh, ww), mu, var, weight, bias, False, 0.0, bn.eps).view(n, ch, hh, ww)


def set_fast_se(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every SE block of ``model`` between the fast path and the straightforward one."""
    for m in model.modules():
        if _is_se(m):
            m.fused = bool(enabled)
    return model
