"""Targets as networks (slth.nets): tracing, batch-norm folding, refusals, files, training."""

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slth import models
from slth.errors import SlthError
from slth.nets import OPS, Net, Node, round_to_float32
from slth.targets import MLP, load_target, save_target


def _random_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _x(net, n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, net.in_dim))


def _ref(model, x, shape):
    with torch.no_grad():
        return model.double()(torch.from_numpy(x).reshape(len(x), *shape)).numpy()


# ---------------------------------------------------------------------------- batch norm


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(5, eps=1e-3)
        self.fc = nn.Linear(5 * 6 * 6, 7)
        self.bn1 = nn.BatchNorm1d(7)
        self.out = nn.Linear(7, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.bn1(self.fc(torch.flatten(x, 1))))
        return self.out(x)


def test_batchnorm_folds_exactly_into_conv_and_linear():
    torch.manual_seed(0)
    model = _random_bn(ConvBN())
    net = load_target(model, input_shape=(2, 6, 6))
    assert isinstance(net, Net)
    assert [n.folded for n in net.nodes if n.op in ("conv", "linear")] == ["bn", "bn1", None]
    assert net.nodes[net.affine[0]].bias is not None  # a bias appears from the batch norm
    x = _x(net, 8)
    np.testing.assert_allclose(net.forward(x), _ref(model, x, (2, 6, 6)), rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------- tracing


class Block(nn.Module):
    def __init__(self, inplace: bool):
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        if self.inplace:
            out += x
        else:
            out = out + x
        return F.relu(out)


class Residual(nn.Module):
    def __init__(self, inplace: bool):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.block = Block(inplace)
        self.fc = nn.Linear(3 * 5 * 5, 4)

    def forward(self, x):
        x = self.block(F.relu(self.stem(x)))
        return self.fc(x.view(x.size(0), -1))


def test_inplace_residual_add_gives_the_same_net_as_explicit_add():
    torch.manual_seed(1)
    a = Residual(inplace=True).eval()
    b = Residual(inplace=False).eval()
    b.load_state_dict(a.state_dict())
    na, nb = load_target(a, input_shape=(1, 5, 5)), load_target(b, input_shape=(1, 5, 5))
    assert [n.op for n in na.nodes] == [n.op for n in nb.nodes]
    assert "add" in [n.op for n in na.nodes]
    assert na.fingerprint() == nb.fingerprint()
    x = _x(na)
    np.testing.assert_array_equal(na.forward(x), nb.forward(x))
    np.testing.assert_allclose(na.forward(x), _ref(a, x, (1, 5, 5)), atol=1e-10)


def test_resnet20_traces_with_option_a_shortcuts():
    torch.manual_seed(0)
    model = _random_bn(models.resnet20())
    net = load_target(model)
    ops = [n.op for n in net.nodes]
    assert set(ops) <= set(OPS)
    assert ops.count("conv") == 19 and ops.count("add") == 9 and ops.count("linear") == 1
    assert ops.count("subsample") == 2 and ops.count("pad_channels") == 2
    assert all(n.folded for n in net.nodes if n.op == "conv")
    subs = [n for n in net.nodes if n.op == "subsample"]
    pads = [n for n in net.nodes if n.op == "pad_channels"]
    assert [s.attrs["stride"] for s in subs] == [(2, 2), (2, 2)]
    assert [(p.attrs["before"], p.attrs["after"]) for p in pads] == [(8, 8), (16, 16)]
    for p in pads:  # the shortcut pads the subsampled block input
        assert net.nodes[p.inputs[0]].op == "subsample"
    assert 260_000 < net.n_params < 280_000 and net.in_shape == (1, 28, 28)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        ref = model(x).numpy()
    out = net.forward(x.double().numpy())
    assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    # the float32 module computes the same function
    with torch.no_grad():
        np.testing.assert_allclose(net.to_module()(x).numpy(), ref, atol=1e-4)


def test_lenet5_traces_and_matches():
    torch.manual_seed(0)
    model = models.lenet5().eval()
    net = load_target(model)
    assert [n.op for n in net.nodes] == ["input", "conv", "relu", "maxpool", "conv", "relu",
                                         "maxpool", "flatten", "linear", "relu", "linear", "relu",
                                         "linear"]
    assert net.nodes[8].weight.shape == (120, 400)
    x = _x(net)
    np.testing.assert_allclose(net.forward(x), _ref(model, x, (1, 28, 28)), atol=1e-10)
    assert models.lenet5((3, 32, 32)).fc1.in_features == 16 * 6 * 6


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class AkamasterStyle(nn.Module):
    """The common CIFAR ResNet code: LambdaLayer shortcut, avg_pool2d(out, out.size()[3])."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 3),
                                                    "constant", 0))
        self.linear = nn.Linear(8, 3)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.pad(out, (0, 0, 0, 0, 2, 2))
        out += self.shortcut(x)
        out = F.relu(out)
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


class ClassicMnist(nn.Module):
    """The PyTorch MNIST example style: un-flattens its input, functional dropout."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, kernel_size=5)
        self.drop = nn.Dropout2d()
        self.fc1 = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        x = x.view(-1, 1, 16, 16)
        x = F.relu(F.max_pool2d(self.drop(self.conv1(x)), 2))
        x = x.view(-1, 4 * 6 * 6)
        return F.dropout(self.fc1(x), training=self.training)


class PreActivation(nn.Module):
    """An in-place ReLU changes the tensor the shortcut also reads."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(1, 3, 3, padding=1)
        self.c1 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        x = self.c0(x)
        shortcut = x
        x.relu_()
        return self.fc((self.c1(x) + shortcut).flatten(1))


@pytest.mark.parametrize("make,shape,ops", [
    (AkamasterStyle, (3, 6, 6), ["conv", "relu", "pad_channels", "subsample", "pad_channels",
                                 "add", "relu", "avgpool", "flatten", "linear"]),
    (ClassicMnist, (256,), ["conv", "maxpool", "relu", "flatten", "linear"]),
    (PreActivation, (1, 4, 4), ["conv", "relu", "conv", "add", "flatten", "linear"]),
])
def test_common_model_styles_trace_and_match(make, shape, ops):
    torch.manual_seed(0)
    model = _random_bn(make())
    net = load_target(model, input_shape=shape)
    assert [n.op for n in net.nodes[1:]] == ops
    x = _x(net)
    with torch.no_grad():
        ref = model.double()(torch.from_numpy(x).reshape(len(x), *shape)).numpy()
    np.testing.assert_allclose(net.forward(x), ref, atol=1e-10)


def test_torch_forward_is_differentiable_and_agrees():
    torch.manual_seed(0)
    net = load_target(models.digits_cnn().eval())
    x = torch.rand(2, 64, dtype=torch.float64, requires_grad=True)
    y = net.torch_forward(x)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == (2, 64)
    np.testing.assert_allclose(y.detach().numpy(), net.forward(x.detach().numpy()), atol=1e-12)


def test_net_contract_is_validated():
    w = np.ones((3, 4))
    Net([Node("input", (), (4,)), Node("linear", (0,), (3,), w)])
    with pytest.raises(SlthError, match="expects 4 inputs but receives 5"):
        Net([Node("input", (), (5,)), Node("linear", (0,), (3,), w)])
    with pytest.raises(SlthError, match="unknown op"):
        Net([Node("input", (), (4,)), Node("gelu", (0,), (4,))])
    with pytest.raises(SlthError, match="outputs a vector"):
        Net([Node("input", (), (1, 4, 4)), Node("relu", (0,), (1, 4, 4))])


# ---------------------------------------------------------------------------- refusals


class Act(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.act = act

    def forward(self, x):
        return self.act(self.conv(x))


class WithAct(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.layer1 = Act(act)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.layer1(x), 1))


class Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return self.fc(-x)


class BNAfterAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.bn = nn.BatchNorm2d(1)
        self.fc = nn.Linear(36, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.bn(self.conv(x) + x), 1))


REFUSED = [
    ("gelu", lambda: WithAct(nn.GELU()).eval(), (1, 6, 6), r"'gelu' at layer1\.act \(GELU"),
    ("layernorm", lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)).eval(),
     None, r"'layernorm' at 1 \(LayerNorm"),
    ("sigmoid", lambda: Sigmoid().eval(), None, r"'sigmoid' at Sigmoid\.forward \(torch\.sigmoid"),
    ("dropout", lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.ReLU(), nn.Linear(4, 2)),
     None, r"'dropout in training mode' at 1 \(Dropout.*model\.eval\(\)"),
    ("control flow", lambda: DataDependent().eval(), None,
     r"'data-dependent control flow' at the model \(DataDependent\.forward.*if x\.sum\(\) > 0"),
    ("groups", lambda: nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(),
                                     nn.Linear(4 * 4 * 4, 2)).eval(), (2, 6, 6),
     r"'grouped convolution \(groups=2\)' at 0 \(Conv2d"),
    ("ceil_mode", lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, ceil_mode=True),
                                        nn.Flatten(), nn.Linear(4 * 2 * 2, 2)).eval(), (1, 5, 5),
     r"'max pooling with ceil_mode=True' at 1 \(MaxPool2d"),
    ("bn after add", lambda: BNAfterAdd().eval(), (1, 6, 6), r"'batch norm after add' at bn"),
    ("bn train", lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                                       nn.Linear(4 * 4 * 4, 2)), (1, 6, 6),
     r"'batch norm in training mode' at 1 \(BatchNorm2d.*model\.eval\(\)"),
]


@pytest.mark.parametrize("what,make,shape,match", REFUSED, ids=[r[0] for r in REFUSED])
def test_unsupported_operations_are_named_with_their_place(what, make, shape, match):
    with pytest.raises(SlthError, match="unsupported operation " + match) as e:
        load_target(make(), input_shape=shape)
    assert "\n" not in str(e.value) and "slth supports" in str(e.value)


def test_in_place_change_of_a_reused_tensor_is_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            h = self.fc(x)
            view = h.view(h.size(0), -1)
            h.relu_()  # changes `view` too
            return self.out(view + h)

    with pytest.raises(SlthError, match="in place"):
        load_target(Bad().eval())


def test_cli_error_is_one_line_and_exit_code_2(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from slth.cli import main
        sys.exit(main(["train", "--model", "lenet5", "--data", "digits", "--epochs", "1",
                       "--out", r"{tmp_path / 'x.safetensors'}"]))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("slth: error:")]
    assert len(lines) == 1 and "LeNet5 needs images of at least 12x12" in lines[0]


# ---------------------------------------------------------------------------- MLPs unchanged


def test_linear_relu_chains_still_load_as_mlp():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(),
                        nn.Linear(4, 3, bias=False))
    m = load_target(seq)
    assert isinstance(m, MLP) and m.dims == [6, 5, 4, 3] and m.names == ["1", "3", "5"]
    # the fingerprint as before (weights only, float64)
    import hashlib
    h = hashlib.sha256()
    for p in (seq[1].weight, seq[1].bias, seq[3].weight, seq[3].bias, seq[5].weight):
        h.update(p.detach().double().numpy().tobytes())
    assert m.fingerprint() == h.hexdigest()[:16]
    assert isinstance(load_target(models.mlp([6, 5, 3]).eval()), MLP)
    # the Net interface of an MLP
    assert [n.op for n in m.nodes] == ["input", "linear", "relu", "linear", "relu", "linear"]
    assert m.affine == [1, 3, 5] and m.in_shape == (6,) and m.in_dim == 6 and m.out_dim == 3
    x = _x(m)
    np.testing.assert_allclose(m.torch_forward(x).numpy(), m.forward(x), atol=1e-12)
    np.testing.assert_allclose(m.as_net().forward(x), m.forward(x), atol=1e-12)


# ---------------------------------------------------------------------------- files


def test_cnn_target_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    net = load_target(_random_bn(models.resnet20()))
    net.save(tmp_path / "r.safetensors")
    back = load_target(tmp_path / "r.safetensors")
    assert isinstance(back, Net) and back.fingerprint() == net.fingerprint()
    assert [(n.op, n.name, n.folded) for n in back.nodes] == [(n.op, n.name, n.folded)
                                                              for n in net.nodes]
    x = _x(net, 2)
    np.testing.assert_array_equal(back.forward(x), net.forward(x))
    with pytest.raises(SlthError, match="not .pt|safetensors"):
        save_target(net, tmp_path / "r.pt")


def test_pt2_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _random_bn(Residual(inplace=True))
    net = load_target(model, input_shape=(1, 5, 5))
    ep = torch.export.export(model, (torch.zeros(2, 1, 5, 5),))
    torch.export.save(ep, tmp_path / "m.pt2")
    back = load_target(tmp_path / "m.pt2")
    assert isinstance(back, Net) and back.fingerprint() == net.fingerprint()
    x = _x(net)
    np.testing.assert_allclose(back.forward(x), _ref(model, x, (1, 5, 5)), atol=1e-10)
    # a float32-exact Net written as .pt2 comes back identical
    r = round_to_float32(load_target(models.digits_cnn().eval()))
    r.save(tmp_path / "d.pt2")
    assert load_target(tmp_path / "d.pt2").fingerprint() == r.fingerprint()


def test_pt2_with_pickled_content_is_refused_before_loading(tmp_path):
    import zipfile
    model = models.mlp([4, 3]).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(2, 4),)), tmp_path / "ok.pt2")
    assert isinstance(load_target(tmp_path / "ok.pt2"), MLP)
    with zipfile.ZipFile(tmp_path / "ok.pt2") as z:
        items = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(tmp_path / "bad.pt2", "w") as z:
        for info, data in items:
            if info.filename.endswith("weights_config.json"):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true')
            z.writestr(info, data)
    with pytest.raises(SlthError, match="pickled"):
        load_target(tmp_path / "bad.pt2")
    # a shape expression that sympy would evaluate as Python
    save_target(load_target(models.mlp([4, 3]).eval()), tmp_path / "dyn.pt2")  # dynamic batch
    with zipfile.ZipFile(tmp_path / "dyn.pt2") as z:
        items = [(i, z.read(i)) for i in z.infolist()]
    assert any(b"Symbol(" in d for i, d in items if i.filename.endswith("model.json"))
    with zipfile.ZipFile(tmp_path / "evil.pt2", "w") as z:
        for info, data in items:
            if info.filename.endswith("model.json"):
                data = data.replace(b"Symbol(", b"__import__('os').getcwd() and Symbol(")
            z.writestr(info, data)
    with pytest.raises(SlthError, match="would run code"):
        load_target(tmp_path / "evil.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(SlthError, match="not a torch.export archive"):
        load_target(tmp_path / "junk.pt2")


def test_pt2_with_unsupported_op_is_named(tmp_path):
    model = WithAct(nn.GELU()).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(2, 1, 6, 6),)), tmp_path / "g.pt2")
    with pytest.raises(SlthError, match=r"unsupported operation 'gelu' at layer1\.act"):
        load_target(tmp_path / "g.pt2")


def test_model_factory_and_weights_file(tmp_path):
    (tmp_path / "mymodel.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Small(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 3, 3, padding=1)
                self.bn = nn.BatchNorm2d(3)
                self.pool = nn.AvgPool2d(2)
                self.fc = nn.Linear(3 * 3 * 3, 2)

            def forward(self, x):
                x = self.pool(torch.relu(self.bn(self.conv(x))))
                return self.fc(x.flatten(1))

        def make():
            return Small()
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        import mymodel
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    model = _random_bn(mymodel.make())
    torch.save(model.state_dict(), tmp_path / "w.pt")
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    direct = load_target(model, input_shape=(1, 6, 6))
    for w in ("w.pt", "w.safetensors"):
        net = load_target(tmp_path / w, model=f"{tmp_path / 'mymodel.py'}:make", input_shape=(1, 6, 6))
        assert net.fingerprint() == direct.fingerprint()
    with pytest.raises(SlthError, match="has no function"):
        load_target(tmp_path / "w.pt", model=f"{tmp_path / 'mymodel.py'}:nope")
    with pytest.raises(SlthError, match="does not fit"):
        torch.save({"x": torch.ones(1)}, tmp_path / "other.pt")
        load_target(tmp_path / "other.pt", model=f"{tmp_path / 'mymodel.py'}:make",
                    input_shape=(1, 6, 6))


# ---------------------------------------------------------------------------- training


def test_cli_trains_a_digits_cnn(tmp_path, run_cli):
    out = tmp_path / "d.safetensors"
    code, stdout, err = run_cli("train", "--model", "digits-cnn", "--data", "digits", "--epochs", "1",
                                "--out", out)
    assert code == 0, err
    assert "test accuracy" in stdout and "s/epoch" in stdout
    net = load_target(out)
    assert isinstance(net, Net) and net.in_shape == (1, 8, 8)
    text = " ".join(stdout.split())
    assert net.fingerprint() in text
    from slth.data import load_dataset
    from slth.targets import accuracy
    d = load_dataset("digits")
    printed = float(re.search(r"test accuracy ([\d.]+)%", text).group(1)) / 100
    assert abs(accuracy(net.forward, d.x_test, d.y_test) - printed) < 0.005


def test_training_is_seeded():
    from slth.data import load_dataset
    from slth.targets import TrainConfig, train_target
    d = load_dataset("digits")
    cfg = TrainConfig(model="digits-cnn", epochs=1, seed=3)
    a, acc_a = train_target(d, cfg)
    b, acc_b = train_target(d, cfg)
    assert a.fingerprint() == b.fingerprint() and acc_a == acc_b
    assert all(np.array_equal(w, w.astype(np.float32)) for w in a.weights)
