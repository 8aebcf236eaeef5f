"""The zero-cost baselines of the one-shot ranking (se_nas.nn.pathscore.synflow and grad_norm; issue 21,
item 5): against hand formulas, and without touching the model they score."""
import torch
from torch import nn

from se_nas.design.space import load_space
from se_nas.nn.build import build_model
from se_nas.nn.pathscore import grad_norm, synflow


def test_synflow_of_a_two_layer_linear_net_is_twice_its_path_sum():
    # R = |W2| |W1| 1; dR/dW2_j = (|W1| 1)_j and dR/dW1_jk = |W2_j|, so each layer's sum |w dR/dw| is R
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False))
    before = [p.clone() for p in net.parameters()]
    r = float(net[1].weight.abs() @ net[0].weight.abs() @ torch.ones(2))
    assert abs(synflow(net, (2,)) - 2 * r) < 1e-6 * r  # r in float32
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # signs and values kept
    assert all(p.grad is None for p in net.parameters())


def test_grad_norm_sums_each_layers_gradient_norm_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    arch = load_space("resnet50-per-stage").baseline()
    model = build_model(arch, 10, stem="small", width=0.125).eval()
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    got = grad_norm(model, x, y)
    ref = build_model(arch, 10, stem="small", width=0.125)
    ref.load_state_dict(buffers)
    nn.functional.cross_entropy(ref.train()(x), y).backward()
    want = sum(m.weight.grad.norm() for m in ref.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert abs(got - float(want)) < 1e-4 * float(want)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())  # BatchNorm statistics too
    # SE at the standard position scales the branch the gradient flows through: the score sees it
    plain = build_model(load_space("resnet50-per-stage").plain(), 10, stem="small", width=0.125)
    assert synflow(plain, (3, 16, 16)) > 0 and grad_norm(plain, x, y) > 0
