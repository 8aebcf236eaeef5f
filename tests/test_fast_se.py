"""The fast SE path (se_nas/nn/fused.py) against the straightforward modules: same outputs, gradients and
BatchNorm statistics in float64 for every squeeze, gate and insertion point; gradcheck on the autograd
Functions; less saved memory; and the reference path under tracing so FLOP counts don't move."""
import copy

import pytest
import torch

from se_nas.design.arch import PRESETS, Arch, StageSE
from se_nas.nn.build import build_model
from se_nas.design.choices import GATES, POSITIONS, SQUEEZES
from se_nas.design.cost import count_cost, traced_flops
from se_nas.nn import fused
from se_nas.nn.fused import bn_se_add_relu, se_scale, set_fast_se
from se_nas.nn.se import SqueezeExcite


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("squeeze", list(SQUEEZES))
@pytest.mark.parametrize("gate", list(GATES))
def test_fast_unit_equals_reference(fast_se, position, squeeze, gate):
    # unit 3 of ResNet-50 is the strided first unit of stage 2, with a projection shortcut
    fast_se.check_unit("resnet50", StageSE(2, squeeze, gate, position), 3)


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_fast_unit_identity_shortcut(fast_se, position, squeeze):
    # unit 1 has an identity shortcut: the tensor the SE (or the fused tail) reads is also the one
    # the addition and the next convolution read, so in-place mistakes would show here
    fast_se.check_unit("resnet50", StageSE(2, squeeze, "sigmoid", position), 1)


@pytest.mark.parametrize("position", ["standard", "after_3x3"])
def test_fast_basic_block_equals_reference(fast_se, position):
    """Basic blocks: the fused tail reads bn2, and after_3x3 puts SE after the first 3x3."""
    fast_se.check_unit("resnet18", StageSE(2, "avg", "sigmoid", position), 2, batch=2)


@pytest.mark.parametrize("own_bn", [True, False], ids=["own-batchnorm", "native-batchnorm"])
@pytest.mark.parametrize("size", [1, 2, 5])
@pytest.mark.parametrize("position", ["standard", "pre"])
def test_fast_unit_map_sizes_and_batchnorm_paths(fast_se, monkeypatch, own_bn, size, position):
    """1x1 maps (no spatial reduction at all), short maps (sums as matrix-vector products on CPU)
    and longer ones; the fused tail with its own BatchNorm statistics (CPU float) and with the
    native kernel (what CUDA and half precision use) must both equal the reference."""
    monkeypatch.setattr(fused, "_own_batch_norm", lambda c: own_bn)
    u, fast, ref = fast_se.unit_pair("resnet50", StageSE(2, "avg", "sigmoid", position), 1)
    x = torch.randn(3, u.in_ch, size, size, dtype=torch.double)
    g = fast_se.upstream_grad(ref, x)
    fast_se.assert_same(fast_se.run(fast, x, g), fast_se.run(ref, x, g))


def test_own_batchnorm_statistics_on_cpu_float():
    """The path the tests above force is the one CPU float32/float64 training takes."""
    assert fused._own_batch_norm(torch.zeros(2, 2, 2, 2))
    assert fused._own_batch_norm(torch.zeros(2, 2, 2, 2, dtype=torch.double))
    assert not fused._own_batch_norm(torch.zeros(2, 2, 2, 2, dtype=torch.bfloat16))


def test_whole_model_training_steps_match():
    """Two SGD steps of SE-ResNet-50 (proxy width): same losses, weights and BatchNorm statistics."""
    torch.manual_seed(0)
    fast = build_model(PRESETS["se_resnet50"], 7, "small", 0.125, zero_init_last=False).double()
    ref = set_fast_se(copy.deepcopy(fast), False)
    x = torch.randn(4, 3, 12, 12, dtype=torch.double)
    y = torch.tensor([0, 3, 6, 1])
    losses = []
    for model in (fast, ref):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[:2] == pytest.approx(losses[2:], rel=1e-10)
    for a, b in zip(fast.state_dict().values(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("squeeze", ["avg", "max", "avgmax"])
def test_gradcheck_scale(squeeze):
    torch.manual_seed(0)
    se = SqueezeExcite(4, StageSE(2, squeeze, "sigmoid"), bias=True).double()
    x = torch.randn(2, 4, 2, 3, dtype=torch.double, requires_grad=True)
    params = se.excitation_parameters()
    assert torch.autograd.gradcheck(lambda x, *p: se_scale(x, se), (x, *params))


@pytest.mark.parametrize("gate", ["sigmoid", "tanh"])
def test_gradcheck_bn_se_add_relu(gate):
    torch.manual_seed(0)
    se = SqueezeExcite(4, StageSE(2, "avg", gate), bias=False).double()
    bn = torch.nn.BatchNorm2d(4).double()
    torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
    c = torch.randn(2, 4, 2, 3, dtype=torch.double, requires_grad=True)
    identity = torch.randn(2, 4, 2, 3, dtype=torch.double, requires_grad=True)
    inputs = (c, identity, bn.weight, bn.bias, *se.excitation_parameters())
    assert torch.autograd.gradcheck(lambda c, i, *p: bn_se_add_relu(c, bn, se, i), inputs)


def test_fast_path_only_when_training_with_autograd():
    model = build_model(PRESETS["se_resnet50"], 3, "small", 0.125).train()
    x = torch.randn(2, 3, 8, 8)
    assert "BNScaleAddReLU" in type(model.stages[0][0](model.stem(x)).grad_fn).__name__
    se = model.stages[0][0].se_residual
    assert se.fast_path_applies()
    with torch.no_grad():
        assert not se.fast_path_applies()
    model.eval()
    assert not se.fast_path_applies()
    set_fast_se(model.train(), False)
    assert not se.fast_path_applies()
    # NoSqueeze has nothing to pool: always the straightforward convolutions
    assert not SqueezeExcite(8, StageSE(2, "none")).fast_path_applies()


@pytest.mark.parametrize("squeeze", ["avg", "max", "avgmax"])
@pytest.mark.parametrize("gate", list(GATES))
def test_inference_excitation_equals_reference(squeeze, gate):
    """Eval mode runs the excitation as matrix products: same outputs, and same input gradients when
    autograd is on in eval mode (saliency maps, adversarial inputs)."""
    torch.manual_seed(0)
    fast = SqueezeExcite(16, StageSE(4, squeeze, gate), bias=True).double().eval()
    ref = set_fast_se(copy.deepcopy(fast), False)
    assert fast.fast_excitation_applies() and not fast.fast_path_applies()
    assert not ref.fast_excitation_applies()
    x = torch.randn(3, 16, 5, 5, dtype=torch.double, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-12, atol=1e-14)
    g = torch.randn(3, 16, 5, 5, dtype=torch.double)
    grads = [torch.autograd.grad(m(x), (x, *m.parameters()), g) for m in (fast, ref)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("position", ["standard", "pre"])
def test_traced_flops_unchanged_in_training_mode(position):
    """fvcore traces the reference path, so its count still equals the analytic one."""
    arch = Arch.uniform("resnet50", StageSE(4, "avg", "sigmoid", position))
    model = build_model(arch, 10, "small", 0.25).train()
    assert traced_flops(model, 32) == count_cost(arch, 32, 10, "small", 0.25).flops
    assert model.training  # traced_flops restores the mode


def _saved_activation_bytes(model, x):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(seen.values())


def test_fast_se_saves_about_what_plain_saves():
    """The target: at most 5% more saved activations than the plain network; the reference saves more."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    plain = _saved_activation_bytes(build_model(PRESETS["resnet50"], 10, "small", 0.25), x)
    fast = _saved_activation_bytes(build_model(PRESETS["se_resnet50"], 10, "small", 0.25), x)
    ref = _saved_activation_bytes(set_fast_se(build_model(PRESETS["se_resnet50"], 10, "small", 0.25), False), x)
    assert fast <= 1.05 * plain
    assert ref > 1.10 * plain


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("squeeze", ["avg", "avgmax"])
def test_float32_as_accurate_as_reference(squeeze, channels_last):
    """float32, where the fast path sums in another order than the reference (its own BatchNorm
    statistics on CPU, matrix-vector sums, norms), in both memory formats (channels_last has no
    (N, C, HW) view: the max-pool gradient takes the dense route).

    This deep proxy at init is ill-conditioned enough that float32 itself drifts from float64 by
    ~1e-4, so both paths are measured against a float64 reference: the fast one must be as close."""
    torch.manual_seed(0)
    arch = Arch("resnet50", (StageSE(4, squeeze), StageSE(4, squeeze, position="post"), None, None))
    fast = build_model(arch, 5, "small", 0.125, zero_init_last=False)
    ref = set_fast_se(copy.deepcopy(fast), False)
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(4, 3, 16, 16)  # BatchNorm over 2 samples of 4x4 maps would be ill-conditioned
    results = []
    for m, xm in ((fast, x), (ref, x), (ref64, x.double())):
        if m is not ref64 and channels_last:
            m.to(memory_format=torch.channels_last)
            xm = xm.to(memory_format=torch.channels_last)
        out = m(xm)
        out.sum().backward()
        results.append([out, *(p.grad for p in m.parameters())])
    for f, r, exact in zip(*results, strict=True):
        err_fast = (f.double() - exact).abs().max().item()
        err_ref = (r.double() - exact).abs().max().item()
        # float32 sums in another order (matrix products, fused passes): same order of error
        assert err_fast <= 4 * err_ref + 1e-4 * (1 + exact.abs().max().item())


def test_set_fast_se_keeps_state_dict_keys():
    a = build_model(PRESETS["se_resnet18"], 4, "small", 0.25)
    b = set_fast_se(copy.deepcopy(a), False)
    assert list(a.state_dict()) == list(b.state_dict())
    assert sum(isinstance(m, SqueezeExcite) and not m.fused for m in b.modules()) == 8
    assert all(m.fused for m in a.modules() if isinstance(m, SqueezeExcite))



@pytest.mark.parametrize("position", ["standard", "pre"])
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_fast_path_under_autocast_matches_reference(position, squeeze):
    """Mixed precision (CUDA's default in recipes) runs the fused backward with autocast off; it must
    recompute the excitation under the forward's autocast (it used to fail on bf16 vs float32).
    Under bf16 the fast path's gradients must be as close to the float32 reference as the reference
    path's own bf16 gradients are."""
    from se_nas.design.arch import Arch, StageSE
    from se_nas.nn.build import build_model
    from se_nas.nn.fused import set_fast_se

    arch = Arch.uniform("resnet18", StageSE(4, squeeze, "sigmoid", position))

    def grads(fast: bool, amp: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = set_fast_se(build_model(arch, 5, "small", 0.25, zero_init_last=False), fast).train()
        x = torch.randn(16, 3, 16, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(x).float().logsumexp(1).sum()
        loss.backward()
        return torch.cat([p.grad.flatten().float() for p in model.parameters()])

    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=0).item()  # noqa: E731
    exact, ref_bf16, fast_bf16 = grads(False, False), grads(False, True), grads(True, True)
    assert torch.isfinite(fast_bf16).all()
    assert cos(fast_bf16, exact) >= cos(ref_bf16, exact) - 0.01
    assert cos(fast_bf16, ref_bf16) > 0.98


def test_one_value_per_channel_raises_like_batchnorm_instead_of_corrupting_stats():
    """native_batch_norm skips nn.BatchNorm2d's "more than 1 value per channel" check and would write
    NaN into running_var; the fused tail must raise like BatchNorm and leave the statistics alone.
    (Inside a model an earlier BatchNorm of the unit raises first; the Function is public.)"""
    torch.manual_seed(0)
    bn, se = torch.nn.BatchNorm2d(16).train(), SqueezeExcite(16, StageSE(4)).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bn_se_add_relu(torch.randn(1, 16, 1, 1), bn, se, torch.randn(1, 16, 1, 1))
    assert torch.isfinite(bn.running_var).all() and torch.isfinite(bn.running_mean).all()


def test_fused_does_not_import_se_at_run_time():
    """se.py imports fused.py; the reverse only for type annotations, so there is no import cycle."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(fused))
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    runtime = [n.module for n in ast.walk(tree)
               if isinstance(n, ast.ImportFrom) and id(n) not in type_only and n.level]
    assert "se" not in runtime, runtime


def _trained_proxy(arch: Arch, steps: int = 3) -> torch.nn.Module:
    """A small model after a few SGD steps: BatchNorm statistics and affine parameters away from
    their initial values, so that folding them into the SE scale has real numbers to fold."""
    torch.manual_seed(0)
    model = build_model(arch, 5, "small", 0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _se_calls(model: torch.nn.Module, mode, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The output under ``mode`` and how many times an SE module's own forward ran."""
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules()
             if isinstance(m, SqueezeExcite)]
    with mode():
        out = model(x)
    for h in hooks:
        h.remove()
    return out, len(calls)


@pytest.mark.parametrize("gate", list(GATES))
@pytest.mark.parametrize("batch,channels_last", [(1, False), (1, True), (3, False), (3, True)])
def test_inference_folds_se_into_batchnorm_and_equals_reference(gate, batch, channels_last):
    """Under torch.inference_mode the standard SE scale rides on the last BatchNorm (no SE module
    forward runs); the logits equal the straightforward model's, in float64 to rounding and in
    float32 to 1e-5. Batches above one in channels_last are not foldable and run unfused."""
    model = _trained_proxy(Arch.uniform("resnet50", StageSE(4, "avg", gate)))
    ref = set_fast_se(copy.deepcopy(model), False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for dtype, tol in ((torch.double, 1e-12), (torch.float, 1e-5)):
        m, r = (copy.deepcopy(t).to(dtype, memory_format=fmt) for t in (model, ref))
        x = torch.randn(batch, 3, 16, 16, dtype=dtype).contiguous(memory_format=fmt)
        out, se_forwards = _se_calls(m, torch.inference_mode, x)
        expected, ref_forwards = _se_calls(r, torch.no_grad, x)
        torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
        assert ref_forwards == 16
        assert se_forwards == (16 if batch > 1 and channels_last else 0)


@pytest.mark.parametrize("position", ["pre", "post", "identity", "after_3x3"])
def test_inference_fold_only_at_the_standard_position(position):
    """Elsewhere nothing follows a BatchNorm to fold into: the SE modules run, outputs unchanged."""
    model = _trained_proxy(Arch.uniform("resnet50", StageSE(4, "avg", "sigmoid", position)), steps=1)
    x = torch.randn(1, 3, 16, 16)
    out, se_forwards = _se_calls(model, torch.inference_mode, x)
    assert se_forwards == 16
    torch.testing.assert_close(out, _se_calls(model, torch.no_grad, x)[0], rtol=0, atol=0)


def test_validation_and_training_paths_never_fold():
    """The training loop's validation runs under no_grad and must keep its numerics bit for bit (the
    searches' answers depend on them): the fold is for inference_mode only, in eval mode only, and
    never under a tracer (export, fvcore) or for other squeezes."""
    model = _trained_proxy(PRESETS["se_resnet50"], steps=1)
    unit = model.stages[0][0]
    bn, se = unit.last_bn, unit.se_residual
    assert not fused.can_fold_bn_into_se(bn, se)  # no inference mode
    with torch.inference_mode():
        assert fused.can_fold_bn_into_se(bn, se)
        assert not fused.can_fold_bn_into_se(bn, set_fast_se(copy.deepcopy(se), False))
        assert not fused.can_fold_bn_into_se(bn.train(), se)
        bn.eval()
        assert not fused.can_fold_bn_into_se(bn, SqueezeExcite(se.fc1.in_channels, StageSE(16, "max")))
    with torch.no_grad():
        assert not fused.can_fold_bn_into_se(bn, se)
    x = torch.randn(2, 3, 16, 16)
    assert _se_calls(model, torch.no_grad, x)[1] == 16
    with torch.inference_mode():
        traced = torch.jit.trace(model, x)  # what export sees: the module's own layers
    assert str(traced.inlined_graph).count("aten::adaptive_avg_pool2d") == 16 + 1  # each SE's squeeze, the head
