"""Every family of the backbone registry (issue 12): forward and backward with sampled SE choices,
the analytic count against fvcore's traced count, exact equality with torchvision's and timm's models
of the same architecture, the SENet paper's complexity figures (Tables 2 and 3), the insertion points
each family has, and export and a tiny search on families without a residual branch."""
import random
from dataclasses import replace

import pytest
import torch
import torchvision

from se_nas.design.arch import PRESETS, Arch, ArchError, StageSE
from se_nas.nn.build import build_model
from se_nas.design.backbones import BACKBONES
from se_nas.design.cost import count_cost, traced_flops
from se_nas.nn.se import SqueezeExcite
from se_nas.design.space import SpaceError, load_space

NEW = ["resnext101_32x4d", "resnext101_64x4d", "senet154", "vgg16_bn", "mobilenet_v1", "mobilenet_v3_large",
       "shufflenet_v1_g3"]
SIZE = {"vgg16_bn": 32}  # five 2x2 max pools need 32 pixels; the others run on 16


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_family_trains_a_step_with_sampled_se(random_arch, backbone):
    rng = random.Random(backbone)
    # bounded gates: an unbounded ReLU gate compounds over 30+ units at init (test_build covers it)
    arch = random_arch(rng, backbone, ("sigmoid", "hardsigmoid", "tanh"))
    torch.manual_seed(0)
    model = build_model(arch, 5, "small", 0.125, zero_init_last=False).double()
    size = SIZE.get(backbone, 16)
    out = model(torch.randn(2, 3, size, size, dtype=torch.double))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    n_se = sum(isinstance(m, SqueezeExcite) for m in model.modules())
    assert n_se == sum(d for d, s in zip(BACKBONES[backbone].depths, arch.stages) if s is not None)


# two designs per family (small and ImageNet stems); one for the deepest, whose code is shared
@pytest.mark.slow
@pytest.mark.parametrize("backbone,seed", [(b, s) for b in NEW for s in range(2)
                                           if s == 0 or b not in ("senet154", "resnext101_64x4d")])
def test_analytic_cost_equals_fvcore_on_random_designs(n_params, random_arch, backbone, seed):
    rng = random.Random(f"{backbone}{seed}")
    arch = random_arch(rng, backbone)
    stem = ["small", "imagenet"][seed]
    size = (SIZE.get(backbone, 16) if stem == "small" else 64) + rng.choice([0, 8])
    width = 0.125 if backbone in ("senet154", "resnext101_64x4d") else rng.choice([0.125, 0.25])
    model = build_model(arch, 10, stem, width)
    cost = count_cost(arch, size, 10, stem, width)
    assert cost.params == n_params(model)
    assert cost.flops == traced_flops(model, size)


@pytest.mark.slow
@pytest.mark.parametrize("preset,reference", [
    ("vgg16_bn", "vgg16_bn"), ("mobilenet_v3_large", "mobilenet_v3_large"),
    ("mobilenet_v3_large_plain", None), ("resnext101_64x4d_tv", "resnext101_64x4d")])
def test_equal_to_torchvision(n_params, preset, reference):
    """Same parameters and traced FLOPs as torchvision's model (MobileNetV3-Large with its own SE:
    r=4 of the expanded channels rounded to 8, hard-sigmoid, after the depthwise, with biases)."""
    arch = PRESETS[preset]
    if reference is None:  # torchvision's MobileNetV3 with every SE block replaced by the identity
        ref = torchvision.models.mobilenet_v3_large()
        for block in ref.features[1:-1]:
            layers = block.block
            for i, m in enumerate(layers):
                if isinstance(m, torchvision.ops.SqueezeExcitation):
                    layers[i] = torch.nn.Identity()
    else:
        ref = getattr(torchvision.models, reference)()
    assert count_cost(arch).params == n_params(ref)
    assert count_cost(arch, 64).flops == traced_flops(ref, 64)


@pytest.mark.slow
@pytest.mark.parametrize("preset,reference", [("senet154", "senet154"), ("resnext101_32x4d_tv", "resnext101_32x4d")])
def test_equal_to_timm(n_params, preset, reference):
    """SENet-154 is timm's ``senet154`` (whose SE has biases) exactly; ResNeXt-101 32x4d timm's."""
    timm = pytest.importorskip("timm")
    arch = PRESETS[preset]
    if preset == "senet154":
        arch = replace(arch, se_bias=True)
    ref = timm.create_model(reference)
    assert count_cost(arch).params == n_params(ref)
    assert count_cost(arch, 64).flops == traced_flops(ref, 64)


@pytest.mark.slow
def test_senet154_is_the_papers_modified_resnext():
    """Appendix: three 3x3 stem convolutions, the first 1x1 of each bottleneck at half width, 3x3
    stride-2 projection shortcuts, dropout before the classifier; 64 groups."""
    model = build_model(PRESETS["senet154"])
    assert [m.kernel_size for m in model.stem if isinstance(m, torch.nn.Conv2d)] == [(3, 3)] * 3
    unit = model.stages[1][0]
    assert (unit.conv1.out_channels, unit.conv2.out_channels, unit.conv2.groups) == (256, 512, 64)
    assert unit.shortcut[0].kernel_size == (3, 3) and unit.shortcut[0].stride == (2, 2)
    assert isinstance(model.fc[0], torch.nn.Dropout) and model.fc[0].p == 0.2
    assert BACKBONES["senet154"].depths == (3, 8, 36, 3)


# The SENet paper's figures at 224x224, 1000 classes. Table 2 gives GFLOPs to two decimals; Table 3
# MFLOPs and millions of parameters. Exact to their precision:
PAPER_EXACT = [  # preset, GFLOPs (MFLOPs to 3 decimals below 1), params (M); None: not given
    ("vgg16_bn", 15.47, None), ("se_vgg16_bn", 15.48, None),
    ("mobilenet_v1", 0.569, 4.2), ("se_mobilenet_v1", None, 4.7),
]
# Within 0.02 GFLOPs, like the deeper ResNets (the stride-on-3x3 form, as for ResNeXt-50):
PAPER_NEAR = [("resnext101_32x4d_tv", 7.99), ("se_resnext101_32x4d_tv", 8.00)]


@pytest.mark.parametrize("preset,gflops,mparams", PAPER_EXACT)
def test_paper_figures_exact(preset, gflops, mparams):
    cost = count_cost(PRESETS[preset])
    if gflops is not None:
        assert round(cost.gflops, 3 if gflops < 1 else 2) == gflops
    if mparams is not None:
        assert round(cost.mparams, 1) == mparams


@pytest.mark.parametrize("preset,gflops", PAPER_NEAR)
def test_paper_figures_near(preset, gflops):
    assert abs(count_cost(PRESETS[preset]).gflops - gflops) <= 0.02


def test_table3_figures_that_differ_by_the_scale_pass():
    """SE-MobileNet 572 MFLOPs and SE-ShuffleNet's +2 MFLOPs: the paper's SE increments equal ours
    without the scale pass (x * s, one FLOP per element), which fvcore's convention counts."""
    for plain, se, paper_plain, paper_se in [("mobilenet_v1", "se_mobilenet_v1", 569, 572),
                                             ("shufflenet_v1_g3", "se_shufflenet_v1_g3", 140, 142)]:
        c = count_cost(PRESETS[se])
        # an avg-squeeze SE block without biases: pooling (C*HW) + excitation (= its parameters) +
        # scale (C*HW), so without the scale pass it adds (se_flops + se_params) / 2
        without_scale = (c.se_flops + c.se_params) / 2
        assert c.flops - count_cost(PRESETS[plain]).flops == c.se_flops
        assert abs(without_scale / 1e6 - (paper_se - paper_plain)) < 0.5, (se, without_scale / 1e6)
    # ShuffleNet 1x g=3 itself: 137.5 MFLOPs and 1.87M parameters here (megvii's reference code: 138M,
    # 1.9M); the paper's 140 and 1.8 are the ShuffleNet paper's rounded figures (docs/backbones.md)
    c = count_cost(PRESETS["shufflenet_v1_g3"])
    assert (round(c.flops / 1e6, 1), round(c.mparams, 2)) == (137.5, 1.87)


@pytest.mark.parametrize("backbone,position", [("vgg16_bn", "identity"), ("vgg16_bn", "post"),
                                               ("vgg16_bn", "after_3x3"), ("mobilenet_v1", "identity"),
                                               ("mobilenet_v3_large", "post")])
def test_a_slot_the_family_lacks_is_refused_in_one_line(backbone, position, tmp_path):
    allowed = ", ".join(BACKBONES[backbone].positions)
    with pytest.raises(ArchError) as e:
        Arch.uniform(backbone, StageSE(position=position))
    msg = str(e.value)
    assert f"position {position!r} is not available on {backbone}" in msg and f"allowed: {allowed}" in msg
    assert "\n" not in msg
    f = tmp_path / "s.yaml"
    f.write_text(f"backbone: {backbone}\nchoices: {{position: [standard, {position}]}}\n")
    with pytest.raises(SpaceError, match=f"{f}: position '{position}' \\(stage s1\\) is not available on "
                                         f"{backbone}.*; allowed: {allowed}$"):
        load_space(f)


def test_stride_form_only_where_a_family_has_a_strided_bottleneck():
    with pytest.raises(ArchError, match="stride_on '3x3' is not available on mobilenet_v1 .*; allowed: 1x1$"):
        Arch.uniform("mobilenet_v1", None, stride_on="3x3")
    with pytest.raises(ArchError, match="unknown backbone 'vgg16'; allowed: resnet18, .*, vgg16_bn, "):
        Arch.uniform("vgg16", None)


def test_every_family_has_plain_and_se_presets_and_a_space():
    from se_nas.design.space import list_spaces

    spaces = {load_space(n).backbone for n in list_spaces()}
    for name in BACKBONES:
        forms = [a for a in PRESETS.values() if a.backbone == name]
        assert any(not a.has_se for a in forms) and any(a.has_se for a in forms), name
        assert name in spaces or name in ("resnet34", "resnet101", "resnet152", "resnext50_32x4d"), name


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenet_v1"])
def test_export_of_a_family_without_a_residual_branch(random_arch, backbone, tmp_path):
    """The model file (safetensors), ONNX and TorchScript hold the same function. (ShuffleNet's shuffle
    and concatenation export too; VGG's ONNX takes its 7x7 head pool only from a 7x7 map: 224x224.)"""
    from onnx.reference import ReferenceEvaluator

    from se_nas.products.export import export_onnx, export_torchscript
    from se_nas.products.modelfile import load_model, save_model

    arch = random_arch(random.Random(3), backbone, ("sigmoid", "hardsigmoid"))
    size = 16
    torch.manual_seed(0)
    model = build_model(arch, 7, "small", 0.125).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = model(x)
    path = save_model(tmp_path / "m.safetensors", model, arch, num_classes=7, stem="small", width=0.125)
    loaded = load_model(path)
    assert loaded.se_nas.arch == arch
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want)
    ts = torch.jit.load(str(export_torchscript(loaded, tmp_path / "m.pt", size)))
    with torch.jit.optimized_execution(False):  # the profiling executor's first run takes ~15 s here
        torch.testing.assert_close(ts(x), want)
    onnx_model = ReferenceEvaluator(str(export_onnx(loaded, tmp_path / "m.onnx", size)))
    got = onnx_model.run(None, {"images": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_tiny_search_on_mobilenet(tmp_path):
    """A real search (tiny recipe, digits) over a family without a residual branch, through the Optuna
    backend; every record's design is a MobileNet v1 with its allowed insertion points."""
    from se_nas.design.budget import Budget
    from se_nas.search.stages import SearchConfig, run_search
    from se_nas.record.study import records

    study = run_search(SearchConfig(study="m", space="mobilenet_v1-per-stage", recipe="tiny", budget=Budget(),
                                    n_trials=2, root=tmp_path, progress=False, calibration_seeds=0,
                                    confirm_top=0))
    recs = records(study)
    assert len(recs) >= 2 and any(r.trained for r in recs)
    for r in recs:  # a design that breaks in training (NaN) is recorded as failed, with its reason
        assert r.arch.backbone == "mobilenet_v1" and r.gflops == pytest.approx(count_cost(r.arch).gflops)
        assert all(s is None or s.position in ("standard", "pre", "after_3x3") for s in r.arch.stages)
        assert 0.0 <= r.accuracy <= 1.0 if r.trained else r.status == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("backbone,index,position", [
    ("shufflenet_v1_g3", 1, "standard"),  # an identity unit: the fused BN-scale-add-ReLU tail
    ("shufflenet_v1_g3", 0, "identity"),  # a strided unit: SE on the pooled shortcut, then concat
    ("mobilenet_v3_large", 4, "after_3x3"),  # its own SE, between depthwise and projection
    ("vgg16_bn", 1, "standard"),  # after the block's last ReLU, before its pool
    ("senet154", 3, "standard"),  # a 3x3 stride-2 projection shortcut
])
def test_fast_se_path_equals_reference_on_other_families(fast_se, backbone, index, position):
    """The fast SE path (se_nas/nn/fused.py) where it applies in each kind of unit: same outputs and
    gradients as the straightforward modules, in float64."""
    fast_se.check_unit(backbone, StageSE(2, "avg", "hardsigmoid", position), index)


def test_fused_tail_is_taken_where_the_unit_ends_like_a_residual_unit():
    from se_nas.nn.build import ResidualUnit

    units = [m for m in build_model(PRESETS["se_shufflenet_v1_g3"], 10, "small", 0.25).modules()
             if isinstance(m, ResidualUnit)]
    assert [u.tail_fusable for u in units[:2]] == [False, True]  # concat vs add + ReLU
    units = [m for m in build_model(PRESETS["mobilenet_v3_large"], 10, "small", 0.25).modules()
             if isinstance(m, ResidualUnit)]
    assert not any(u.tail_fusable for u in units)  # no ReLU after its additions
