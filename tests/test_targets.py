"""Loading targets: modules, state_dicts, safetensors; and refusing what is not a plain MLP."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from slth.errors import SlthError
from slth.targets import MLP, load_target


def small_net(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5, bias=bias), nn.ReLU(), nn.Linear(5, 3, bias=bias))


@pytest.mark.parametrize("bias", [True, False])
def test_module_state_dict_and_safetensors_give_the_same_mlp(tmp_path, bias):
    net = small_net(bias)
    torch.save(net.state_dict(), tmp_path / "t.pt")
    a = load_target(net)
    b = load_target(tmp_path / "t.pt")
    a.save(tmp_path / "t.safetensors")
    c = load_target(tmp_path / "t.safetensors")
    x = np.random.default_rng(0).uniform(0, 1, (7, 6))
    ref = net(torch.from_numpy(x).float()).detach().numpy()
    for m in (a, b, c):
        assert m.dims == [6, 5, 3] and m.has_bias == bias
        np.testing.assert_allclose(m.forward(x), ref, atol=1e-5)


def test_named_state_dict_keys_in_layer_order(tmp_path):
    sd = {"fc1.weight": torch.ones(4, 3), "fc2.weight": torch.ones(2, 4)}
    torch.save(sd, tmp_path / "t.pt")
    m = load_target(tmp_path / "t.pt")
    assert m.names == ["fc1", "fc2"] and m.dims == [3, 4, 2] and not m.has_bias


class Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


@pytest.mark.parametrize("make,match", [
    (lambda p: torch.save({"conv.weight": torch.ones(2, 1, 3, 3)}, p), "only Linear"),
    (lambda p: torch.save({"a.weight": torch.ones(4, 3), "b.weight": torch.ones(2, 5)}, p), "must chain"),
    (lambda p: torch.save({"a.weight": torch.full((4, 3), float("nan"))}, p), "NaN"),
    (lambda p: torch.save({"bn.running_mean": torch.ones(3)}, p), "unsupported entry"),
    (lambda p: torch.save([1, 2, 3], p), "not a state_dict"),
    (lambda p: p.write_bytes(pickle.dumps(Evil())), "would run code|not a torch state_dict"),
    (lambda p: p.write_text("hello"), "not a torch state_dict"),
])
def test_bad_targets_are_refused_with_a_clear_message(tmp_path, make, match):
    p = tmp_path / "bad.pt"
    make(p)
    with pytest.raises(SlthError, match=match):
        load_target(p)


def test_missing_file_and_unsupported_module():
    with pytest.raises(SlthError, match="not found"):
        load_target("/nonexistent/target.pt")
    with pytest.raises(SlthError, match="not supported"):
        load_target(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))


def test_mlp_forward_matches_to_module():
    rng = np.random.default_rng(0)
    m = MLP([rng.normal(size=(4, 3)), rng.normal(size=(2, 4))], [rng.normal(size=4), None])
    x = rng.uniform(size=(5, 3))
    out = m.to_module()(torch.from_numpy(x).float()).detach().numpy()
    np.testing.assert_allclose(m.forward(x), out, atol=1e-5)
