"""The backward (CROWN-style) bound of a network's trailing linear/ReLU chain: sound when the
ticket's weight errors are large enough for every relaxation to matter, and never looser than
the forward bound it refines."""

import numpy as np
import pytest
import torch
from torch import nn

from slth import certify
from slth.certify import Domain, bound_details, effective_forward
from slth.targets import load_target
from slth.ticket import EffectiveLayer


def lenet_like(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 3 * 3, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                         nn.Linear(8, 3)).eval()


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(),
                         nn.Linear(10, 4)).eval()


def perturbed(net, rel: float, seed: int) -> list[EffectiveLayer]:
    """An effective form whose weights and biases are the target's plus uniform errors of
    ``rel`` times each layer's largest weight (a far worse ticket than any construction's)."""
    rng = np.random.default_rng(seed)
    eff = []
    for nd in net.nodes:
        if nd.op not in ("linear", "conv"):
            continue
        W = nd.weight.reshape(nd.weight.shape[0], -1)
        s = rel * np.abs(W).max()
        c = np.zeros(len(W)) if nd.bias is None else nd.bias
        eff.append(EffectiveLayer(W + rng.uniform(-s, s, W.shape), -W + rng.uniform(-s, s, W.shape),
                                  c + rng.uniform(-s, s, len(W))))
    return eff


def largest_error(net, eff, domain: Domain, seed: int) -> float:
    """The largest ||F - G_hat||_inf found at random points, box corners and by ascent."""
    rng = np.random.default_rng(seed)
    d = net.in_dim
    x = certify.search_starts(d, domain, None, 400, seed)
    if domain.kind == "box":
        x = np.concatenate([x, rng.choice([domain.lo, domain.hi], (400, d))])
    x = np.concatenate([x, certify.ascend(net, eff, domain, x[:64], 40)])
    with torch.no_grad():
        t = torch.as_tensor(x)
        return float((net.torch_forward(t) - effective_forward(net, eff, t)).abs().max())


CASES = [("lenet-like", lenet_like, (1, 8, 8)), ("mlp", mlp, (16,))]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name,factory,shape", CASES)
def test_tail_bound_holds_when_weight_errors_are_large(name, factory, shape, seed):
    net = load_target(factory(seed), input_shape=shape)
    # the ball: the MLP's chain starts at an input of either sign (no tail), LeNet's past pooling
    domain = Domain("box") if seed % 2 == 0 else Domain("ball", radius=3.0)
    for rel in (1e-3, 3e-2):
        eff = perturbed(net, rel, seed)
        bound = bound_details(net, eff, domain)["certified_bound"]
        assert largest_error(net, eff, domain, seed) <= bound


@pytest.mark.parametrize("name,factory,shape", CASES)
def test_tail_bound_is_never_looser_than_the_forward_bound(name, factory, shape):
    tighter = 0
    for seed in range(4):
        net = load_target(factory(seed), input_shape=shape)
        eff = perturbed(net, 1e-3, seed)
        both = bound_details(net, eff, Domain("box"))
        forward = bound_details(net, eff, Domain("box"), tail=False)
        assert both["certified_bound"] <= forward["certified_bound"]
        assert all(b <= f for b, f in zip(both["per_layer_deviation"],
                                          forward["per_layer_deviation"]))
        tighter += both["certified_bound"] < forward["certified_bound"] * (1 - 1e-6)
    if name == "lenet-like":     # past max pooling the forward bound has only intervals
        assert tighter > 0


def test_a_network_without_a_linear_relu_tail_has_no_tail():
    net = load_target(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(2 * 6 * 6, 3)).eval(), input_shape=(1, 8, 8))
    assert certify._tail_start(net.nodes) is None
    net = load_target(lenet_like(0), input_shape=(1, 8, 8))
    assert net.nodes[certify._tail_start(net.nodes)].op == "maxpool"
