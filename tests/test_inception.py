"""BN-Inception and Inception-ResNet-v2 against independent references: timm's inception_resnet_v2
(layer for layer), Ioffe & Szegedy's table by hand formula, fvcore's traced count, the paper's Table 2."""
import random

import pytest
import torch

from se_nas.design.arch import PRESETS, Arch, ArchError, StageSE
from se_nas.nn.build import build_model
from se_nas.design.choices import GATES, SQUEEZES
from se_nas.design.cost import count_cost, traced_flops
from se_nas.design.geometry import resolve, unit_input_sizes
from se_nas.design.space import load_space

FAMILIES = {"bn_inception": ("standard", "pre"), "inception_resnet_v2": ("standard", "pre", "post", "identity")}


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: on a busy 2-core machine a second intra-op thread only waits (50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def design(seed: int, backbone: str) -> Arch:
    """Random r, gate and bias; over seeds 0 and 1 the six stage choices cover every insertion point
    the family allows and every squeeze; seed 2 has no SE in its second stage."""
    rng, allowed = random.Random(seed), FAMILIES[backbone]
    stages = tuple(StageSE(rng.choice([1, 2, 4, 8, 16, 32]), list(SQUEEZES)[(3 * seed + i) % len(SQUEEZES)],
                           rng.choice(list(GATES)), allowed[(3 * seed + i) % len(allowed)]) for i in range(3))
    return Arch(backbone, stages[:1] + (None,) + stages[2:] if seed == 2 else stages, se_bias=rng.random() < 0.5)


# per seed (stem, width, image size, classes): the imagenet stems at about their smallest inputs
SETTINGS = {
    "bn_inception": [("imagenet", 0.25, 64, 1000), ("small", 0.25, 17, 10), ("imagenet", 0.125, 97, 100)],
    "inception_resnet_v2": [("imagenet", 0.125, 75, 1000), ("small", 0.125, 13, 10), ("imagenet", 0.25, 90, 100)],
}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(FAMILIES))
@pytest.mark.parametrize("seed", range(3))
def test_analytic_cost_equals_fvcore_on_random_designs(n_params, backbone, seed):
    arch = design(seed, backbone)
    stem, width, size, classes = SETTINGS[backbone][seed]
    model = build_model(arch, classes, stem, width)
    cost = count_cost(arch, size, classes, stem, width)
    assert cost.params == n_params(model)
    assert cost.flops == traced_flops(model, size)


@pytest.mark.parametrize("backbone", list(FAMILIES))
def test_forward_and_backward_on_a_sampled_design(backbone):
    torch.manual_seed(0)
    arch = design(2, backbone)
    model = build_model(arch, 10, "small", 0.125)
    out = model(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 10)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name,count", [("se_bn_inception", 10), ("se_inception_resnet_v2", 40)])
def test_se_sits_on_every_module_output_or_residual_branch(name, count):
    """SE-BN-Inception: one SE per Inception module, on its output; SE-Inception-ResNet-v2: one per
    residual module (10 + 20 + 10), on the residual branch, none on the Mixed modules."""
    model = build_model(PRESETS[name], 10, "small", 0.125)
    holders = [n.rsplit(".", 1) for n, m in model.named_modules() if type(m).__name__ == "SqueezeExcite"]
    assert len(holders) == count and {slot for _, slot in holders} == {"se_residual"}
    if name == "se_inception_resnet_v2":  # each stage opens with its Mixed module, which has no SE
        units = [m for m in model.modules() if type(m).__name__ == "InceptionModule"]
        assert [i for i, m in enumerate(units) if m.entry is not None] == [0, 10, 30]
        assert not any(type(m).__name__ == "SqueezeExcite" for u in units if u.entry for m in u.entry.modules())


@pytest.mark.slow
def test_equals_timms_inception_resnet_v2(n_params):
    """Layer for layer timm's model (the TF-slim form): the same parameter tensors in the same order,
    the same count, and fvcore's traced FLOPs of timm's model equal our analytic count at 299x299."""
    timm = pytest.importorskip("timm")
    theirs = timm.create_model("inception_resnet_v2")
    ours = build_model(PRESETS["inception_resnet_v2"])
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    cost = count_cost(PRESETS["inception_resnet_v2"], 299)
    assert cost.params == n_params(theirs)
    assert cost.flops == traced_flops(theirs, 299)


# Ioffe & Szegedy (2015), Fig. 5, transcribed again for this test: per Inception module its input
# width, #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool projection (0: pass-through),
# and the output side at 224x224.
IOFFE = [
    (192, 64, 64, 64, 64, 96, 32, 28), (256, 64, 64, 96, 64, 96, 64, 28), (320, 0, 128, 160, 64, 96, 0, 14),
    (576, 224, 64, 96, 96, 128, 128, 14), (576, 192, 96, 128, 96, 128, 128, 14),
    (576, 160, 128, 160, 128, 160, 128, 14), (608, 96, 128, 192, 160, 192, 128, 14),
    (608, 0, 128, 192, 192, 256, 0, 7), (1056, 352, 192, 320, 160, 224, 128, 7),
    (1024, 352, 192, 320, 192, 224, 128, 7),
]


def _conv(cin, cout, k):  # a bias-free convolution and its BatchNorm
    return cin * cout * k * k + 2 * cout


def test_bn_inception_by_hand_from_ioffes_table(n_params):
    params = _conv(3, 64, 7) + _conv(64, 64, 1) + _conv(64, 192, 3) + 1024 * 1000 + 1000
    widths = []
    for cin, n1, r3, n3, rd, nd, proj, _ in IOFFE:
        params += (_conv(cin, n1, 1) if n1 else 0) + _conv(cin, r3, 1) + _conv(r3, n3, 3)
        params += _conv(cin, rd, 1) + _conv(rd, nd, 3) + _conv(nd, nd, 3) + (_conv(cin, proj, 1) if proj else 0)
        widths.append(n1 + n3 + nd + (proj or cin))
    assert widths[:-1] == [row[0] for row in IOFFE[1:]] and widths[-1] == 1024  # the table is consistent
    arch = PRESETS["bn_inception"]
    assert count_cost(arch).params == params == n_params(build_model(arch))
    geom = resolve(arch)
    assert [u.out_ch for u in geom.units] == widths
    sides = unit_input_sizes(geom, 224)[1:] + (7,)
    assert list(sides) == [row[-1] for row in IOFFE]


def test_se_cost_by_hand():
    """SE on every Inception module's output (BN-Inception) or residual branch (Inception-ResNet-v2):
    2C^2/16 excitation weights and MACs, one pooling and one scaling pass over the C x H x W map."""
    bn_sites = [(row[0] if i + 1 == len(IOFFE) else IOFFE[i + 1][0], row[-1]) for i, row in enumerate(IOFFE)]
    bn_sites[-1] = (1024, 7)
    irv2_sites = [(320, 35)] * 10 + [(1088, 17)] * 20 + [(2080, 8)] * 10
    for name, sites, size in (("bn_inception", bn_sites, 224), ("inception_resnet_v2", irv2_sites, 299)):
        plain, se = count_cost(PRESETS[name], size), count_cost(PRESETS[f"se_{name}"], size)
        assert se.params - plain.params == sum(2 * c * (c // 16) for c, _ in sites) == se.se_params
        assert se.flops - plain.flops == sum(2 * c * (c // 16) + 2 * c * s * s for c, s in sites) == se.se_flops


def test_paper_table_2_bn_inception():
    """Table 2: BN-Inception 2.03 GFLOPs, SE-BN-Inception 2.04, at 224x224."""
    assert round(count_cost(PRESETS["bn_inception"]).gflops, 2) == 2.03
    assert round(count_cost(PRESETS["se_bn_inception"]).gflops, 2) == 2.04


@pytest.mark.parametrize("backbone", list(FAMILIES))
@pytest.mark.parametrize("position", ["standard", "pre", "post", "identity", "after_3x3"])
def test_positions_a_family_lacks_are_refused_in_one_line(backbone, position):
    if position in FAMILIES[backbone]:
        Arch.uniform(backbone, StageSE(position=position))
        return
    with pytest.raises(ArchError) as e:
        Arch.uniform(backbone, StageSE(position=position))
    msg = str(e.value)
    assert "\n" not in msg and backbone in msg and repr(position) in msg
    assert "allowed: " + ", ".join(FAMILIES[backbone]) in msg


def test_an_input_too_small_for_the_stem_is_one_clear_line():
    with pytest.raises(ArchError, match=r"inception_resnet_v2 .*at least 75.*got image_size=74"):
        count_cost(PRESETS["inception_resnet_v2"], 74)
    count_cost(PRESETS["inception_resnet_v2"], 75)


@pytest.mark.parametrize("name", ["bn_inception-per-stage", "inception_resnet_v2-per-stage"])
def test_search_space_files_sample_designs_the_family_allows(name):
    optuna = pytest.importorskip("optuna")
    space = load_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    positions = set()
    for _ in range(20):
        arch = space.sample(study.ask())
        assert arch.backbone == space.backbone
        positions |= {s.position for s in arch.stages if s is not None}
        assert count_cost(arch, space.deploy_image_size).flops > 0
    assert positions == set(FAMILIES[space.backbone])
    cheapest, _ = space.cheapest()
    assert cheapest == PRESETS[space.backbone]  # no SE anywhere costs least


@pytest.mark.slow
def test_model_file_onnx_and_torchscript_hold_the_same_function(tmp_path):
    """Inception-ResNet-v2 (Mixed entries, scaled residuals, 1x7/7x1 and valid convolutions, SE in
    every slot it has) through the model file, TorchScript and ONNX."""
    pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    from se_nas.products.export import export_onnx, export_torchscript
    from se_nas.products.modelfile import load_model, save_model

    arch = Arch("inception_resnet_v2", (StageSE(4, position="pre"), StageSE(4, "max", "hardsigmoid", "identity"),
                                        StageSE(8, position="post")))
    torch.manual_seed(0)
    model = build_model(arch, 7, "small", 0.125).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        want = model(x)
    loaded = load_model(save_model(tmp_path / "m.safetensors", model, arch, num_classes=7, stem="small", width=0.125))
    assert loaded.se_nas.arch == arch
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want)
    ts = torch.jit.load(str(export_torchscript(loaded, tmp_path / "m.pt", 12)))
    with torch.jit.optimized_execution(False):
        torch.testing.assert_close(ts(x), want)
    got = ReferenceEvaluator(str(export_onnx(loaded, tmp_path / "m.onnx", 12))).run(None, {"images": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone,index,position", [
    ("bn_inception", 2, "standard"),  # 3c: a reduction module, SE on the concatenation
    ("inception_resnet_v2", 10, "standard"),  # Mixed_6a then a Block17: SE before the scaled addition
    ("inception_resnet_v2", 11, "identity"),  # SE on the shortcut of a Block17
])
def test_fast_se_path_equals_reference(fast_se, backbone, index, position):
    """The fast SE path (se_nas/nn/fused.py) inside Inception units: the same outputs and gradients as
    the straightforward modules, in float64."""
    import copy

    from se_nas.nn.build import make_unit
    from se_nas.nn.fused import set_fast_se

    u = resolve(Arch.uniform(backbone, StageSE(2, "avg", "hardsigmoid", position)), "small", 0.125).units[index]
    torch.manual_seed(index)
    fast = make_unit(u, se_bias=True).double()
    ref = set_fast_se(copy.deepcopy(fast), False)
    x = torch.randn(2, u.in_ch, 9, 9, dtype=torch.double)
    g = fast_se.upstream_grad(ref, x)
    fast_se.assert_same(fast_se.run(fast, x, g), fast_se.run(ref, x, g))
