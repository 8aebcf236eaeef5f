"""Built models: forward and backward for every choice, widths as resolved, errors on bad input."""
import pytest
import torch

from se_nas.design.arch import PRESETS, Arch, ArchError, StageSE
from se_nas.nn.build import build_model
from se_nas.design.choices import GATES, POSITIONS, SQUEEZES
from se_nas.design.backbones import BACKBONES
from se_nas.nn.se import SqueezeExcite


def _fwd_bwd(arch, backbone_width=0.25, size=16):
    torch.manual_seed(0)
    # zero_init_last=False: with zero-initialised residual branches the SE sees no gradient at step 0
    # float64: an unbounded ReLU gate at every position (NoSqueeze, POST) compounds past float32 at init
    model = build_model(arch, num_classes=5, stem="small", width=backbone_width, zero_init_last=False).double()
    x = torch.randn(2, 3, size, size, dtype=torch.double)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("squeeze", list(SQUEEZES))
@pytest.mark.parametrize("gate", list(GATES))
def test_forward_backward_every_choice(position, squeeze, gate):
    model = _fwd_bwd(Arch.uniform("resnet50", StageSE(4, squeeze, gate, position)))
    # SE parameters receive gradient (zero-init of the last BN must not cut them off everywhere)
    se_grads = [m.fc1.weight.grad.abs().sum() for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert len(se_grads) == 16
    if gate != "relu":  # an unbounded ReLU gate can be dead at init (all outputs 0): Table 12's point
        assert sum(se_grads) > 0


@pytest.mark.slow
@pytest.mark.parametrize("backbone", [b for b, spec in BACKBONES.items() if spec.unit in ("basic", "bottleneck")])
@pytest.mark.parametrize("position", ["standard", "after_3x3", "pre"])
def test_every_backbone(backbone, position):
    """Every residual family (the others: tests/test_backbones.py)."""
    _fwd_bwd(Arch.uniform(backbone, StageSE(8, "avg", "sigmoid", position)), 0.125, 8)


def test_stages_switch_independently():
    arch = Arch("resnet50", (StageSE(), None, StageSE(2, "max"), None))
    model = build_model(arch, 10, "small", 0.25)
    per_stage = [sum(isinstance(m, SqueezeExcite) for m in s.modules()) for s in model.stages]
    assert per_stage == [3, 0, 6, 0]


def test_se_block_is_the_paper_formula():
    """y = x * sigmoid(W2 relu(W1 avgpool(x))), written out with plain tensors."""
    torch.manual_seed(0)
    se = SqueezeExcite(32, StageSE(4), bias=False).double()
    x = torch.randn(3, 32, 5, 7, dtype=torch.double)
    w1, w2 = se.fc1.weight[:, :, 0, 0], se.fc2.weight[:, :, 0, 0]
    z = x.mean((2, 3))
    s = torch.sigmoid(torch.relu(z @ w1.T) @ w2.T)
    torch.testing.assert_close(se(x), x * s[:, :, None, None])
    assert w1.shape == (8, 32)


def test_stride_placement():
    """Paper form strides the first 1x1 of a bottleneck; torchvision form strides the 3x3."""
    paper = build_model(PRESETS["resnet50"]).stages[1][0]
    tv = build_model(PRESETS["resnet50_tv"]).stages[1][0]
    assert paper.conv1.stride == (2, 2) and paper.conv2.stride == (1, 1)
    assert tv.conv1.stride == (1, 1) and tv.conv2.stride == (2, 2)


def test_bad_build_arguments():
    with pytest.raises(ArchError, match="width multiplier must be a number in \\(0, 4\\], got width=0"):
        build_model(PRESETS["resnet18"], width=0)
    with pytest.raises(ArchError, match="unknown stem 'cifar'; allowed: imagenet, small"):
        build_model(PRESETS["resnet18"], stem="cifar")
    with pytest.raises(ArchError, match="num_classes=0"):
        build_model(PRESETS["resnet18"], num_classes=0)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,stem,size", [("resnet18", "small", 16), ("resnet50", "imagenet", 64),
                                                ("resnext50_32x4d", "small", 20)])
def test_unit_input_sizes_are_what_each_built_unit_receives(backbone, stem, size):
    """The sizes a per-unit measurement feeds each unit equal the inputs the whole model gives them,
    and ``make_unit`` builds the same module (same state-dict shapes) the model holds there."""
    from se_nas.nn.build import make_unit
    from se_nas.design.geometry import resolve, unit_input_sizes

    arch = Arch.uniform(backbone, StageSE(reduction=4, position="pre"), stride_on="3x3")
    geom = resolve(arch, stem, 0.25)
    model = build_model(arch, 10, stem, 0.25).eval()
    units = [u for stage in model.stages for u in stage]
    seen = []
    for u in units:
        u.register_forward_pre_hook(lambda mod, inp: seen.append(tuple(inp[0].shape[1:])))
    model(torch.zeros(1, 3, size, size))
    assert [s[1] for s in seen] == list(unit_input_sizes(geom, size))
    assert [s[0] for s in seen] == [u.in_ch for u in geom.units]
    for u, built in zip(geom.units, units):
        alone = make_unit(u, arch.se_bias).state_dict()
        assert {k: v.shape for k, v in alone.items()} == {k: v.shape for k, v in built.state_dict().items()}
