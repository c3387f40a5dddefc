"""Convolutional and residual targets end to end: the certified bound is never below an error
found, the ticket computes what its saved masks say, runs are chunk- and worker-independent and
resume after a crash, malach refuses convolutions, and the CLI builds a digits CNN."""

import json
from pathlib import Path
import logging
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slth.certify import Domain
from slth.constructions import construct
from slth.nets import Net, load_net_safetensors
from slth.report import evaluate
from slth.runs import execute
from slth.targets import load_target

FAST = {"restarts": 1, "steps": 2}
SIZES = {"pensia": 5, "orseau": 12}


# ---------------------------------------------------------------------------- a zoo of tiny CNNs


class ConvPoolFC(nn.Module):
    """conv (bias, stride 1, padding 1) - relu - maxpool 2 - flatten - linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


class StridedNoBias(nn.Module):
    """conv without bias, stride 2, padding 0 - relu - flatten - linear without bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, bias=False)
        self.fc = nn.Linear(4 * 3 * 3, 3, bias=False)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class DilatedAvg(nn.Module):
    """conv with padding 2 and dilation 2 on two channels - relu - avgpool 2 - linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=2, dilation=2)
        self.fc = nn.Linear(3 * 5 * 5, 2)

    def forward(self, x):
        return self.fc(torch.flatten(F.avg_pool2d(F.relu(self.conv(x)), 2), 1))


class GlobalAvg(nn.Module):
    """two convs, global average pooling (adaptive to 1x1), a Linear on the channel vector."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).view(x.shape[0], -1))


class AdaptiveTwoByTwo(nn.Module):
    """adaptive average pooling to 2x2 of a 5x5 map (overlapping windows), two Linear layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2, padding=(1, 0), bias=False)
        self.fc1 = nn.Linear(3 * 2 * 2, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):
        h = F.adaptive_avg_pool2d(F.relu(self.conv(x)), (2, 2))
        return self.fc2(F.relu(self.fc1(torch.flatten(h, 1))))


class IdentityBlock(nn.Module):
    """a residual block with an identity shortcut, added in place (``out += x``)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.c1 = nn.Conv2d(3, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        out = self.c2(F.relu(self.c1(x)))
        out += x
        out = F.max_pool2d(F.relu(out), 2)
        return self.fc(torch.flatten(out, 1))


class ProjectionBlock(nn.Module):
    """a residual block whose shortcut is a strided 1x1 convolution (a projection)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.proj = nn.Conv2d(1, 4, 1, stride=2, bias=False)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        out = self.c2(F.relu(self.c1(x))) + self.proj(x)
        return self.fc(torch.flatten(F.relu(out), 1))


class OptionABlock(nn.Module):
    """a ResNet option-A shortcut: ``x[:, :, ::2, ::2]`` padded with zero channels, plus a
    batch norm folded into the strided convolution."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        out = self.c2(F.relu(self.bn1(self.c1(x))))
        out = out + F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 1, 1))
        out = F.adaptive_avg_pool2d(F.relu(out), 1)
        return self.fc(torch.flatten(out, 1))


class OverlappingMaxPool(nn.Module):
    """max pooling with kernel 3, stride 1, padding 1 (overlapping windows, -inf padding)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv(x)), 3, stride=1, padding=1)
        return self.fc(torch.flatten(h, 1))


class AvgPoolPadded(nn.Module):
    """average pooling with padding, not counting the padded zeros (count_include_pad=False)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.fc = nn.Linear(3 * 5 * 5, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


class RectangularKernel(nn.Module):
    """a 2x3 kernel with stride (1, 2) and padding (0, 1), two convolutions in a Sequential."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 3, (2, 3), stride=(1, 2), padding=(0, 1)),
                                      nn.ReLU(), nn.Conv2d(3, 2, 2), nn.ReLU())
        self.fc = nn.Linear(2 * 6 * 3, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class TwoBlocksBN(nn.Module):
    """two identity residual blocks in a row with batch norm folded into every convolution."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.blocks = nn.ModuleList(nn.ModuleList([nn.Conv2d(2, 2, 3, padding=1, bias=False),
                                                   nn.BatchNorm2d(2)]) for _ in range(2))
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        for conv, bn in self.blocks:
            x = F.relu(bn(conv(x)) + x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# (model, input shape, domain, expected ops in the traced graph)
ZOO = {
    "conv-maxpool-linear": (ConvPoolFC, (1, 8, 8), Domain("box"), {"maxpool"}),
    "stride2-no-bias": (StridedNoBias, (1, 8, 8), Domain("ball", radius=2.0), set()),
    "dilation-padding2-avgpool": (DilatedAvg, (2, 10, 10), Domain("box"), {"avgpool"}),
    "global-avgpool": (GlobalAvg, (1, 8, 8), Domain("ball", radius=3.0), {"adaptive_avgpool"}),
    "adaptive-2x2": (AdaptiveTwoByTwo, (2, 4, 5), Domain("box", lo=-1.0, hi=1.0),
                     {"adaptive_avgpool"}),
    "identity-shortcut-inplace": (IdentityBlock, (1, 8, 8), Domain("box"), {"add"}),
    "projection-shortcut": (ProjectionBlock, (1, 8, 8), Domain("ball", radius=2.0), {"add"}),
    "option-a-shortcut": (OptionABlock, (2, 8, 8), Domain("box"),
                          {"add", "subsample", "pad_channels"}),
    "maxpool-k3-s1-p1": (OverlappingMaxPool, (1, 8, 8), Domain("ball", radius=1.5), {"maxpool"}),
    "avgpool-padded": (AvgPoolPadded, (2, 10, 10), Domain("ball", radius=2.5), {"avgpool"}),
    "rectangular-kernel": (RectangularKernel, (1, 8, 8), Domain("box"), set()),
    "two-blocks-bn": (TwoBlocksBN, (1, 6, 6), Domain("ball", radius=2.0), {"add"}),
}


def make_target(name: str, seed: int = 0) -> Net:
    cls, shape, _, ops = ZOO[name]
    torch.manual_seed(seed)
    model = cls()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):    # batch norm that is not the identity
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(1.5)
    net = load_target(model.eval(), input_shape=shape)
    assert isinstance(net, Net)
    assert ops <= {nd.op for nd in net.nodes}, (name, net)
    return net


def points_in(domain: Domain, d: int, n: int, rng) -> np.ndarray:
    """n points of the domain (box: uniform; ball: uniform directions, radii up to R)."""
    if domain.kind == "box":
        return rng.uniform(domain.lo, domain.hi, (n, d))
    u = rng.normal(size=(n, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return u * domain.radius * rng.uniform(0, 1, (n, 1)) ** (1 / 4)


# ---------------------------------------------------------------------------- soundness


@pytest.mark.parametrize("method", ["pensia", "orseau"])
@pytest.mark.parametrize("name", list(ZOO))
def test_errors_found_on_cnns_never_exceed_the_certified_bound(name, method):
    net = make_target(name)
    domain = ZOO[name][2]
    rng = np.random.default_rng(len(name))
    con = construct(net, method=method, n=SIZES[method], domain=domain, seed=3)

    class Data:
        x_test = points_in(domain, net.in_dim, 80, rng)
        y_test = np.zeros(80, dtype=np.int64)

    rep = evaluate(net, con, domain, Data, seed=1, restarts=4, steps=25, starts_from_data=8)
    bound = rep["certified_bound"]
    assert np.isfinite(bound) and bound > 0
    assert rep["test_inputs_in_domain"] == 80
    assert rep["empirical_max_error"] <= bound
    assert rep["adversarial_max_error"] <= bound
    assert rep["max_error_found"] <= bound and rep["bound_holds"]
    # and independently of the report: the float64 target and ticket on the same points
    direct = np.abs(net.forward(Data.x_test) - con.ticket.forward(Data.x_test)).max()
    assert direct <= bound
    assert direct <= rep["max_error_found"] * (1 + 1e-6) + 1e-12


# ---------------------------------------------------------------------------- the saved file


def read_header(path) -> dict:
    """The safetensors header, read by hand: 8-byte little-endian length, then JSON."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def np_conv2d(x, w, b, stride, padding, dilation):
    """x [N, C, H, W], w [O, C, kh, kw]: a cross-correlation written with numpy only."""
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((N, O, oh, ow))
    for p in range(kh):
        for q in range(kw):
            patch = xp[:, :, p * dh:p * dh + sh * (oh - 1) + 1:sh,
                       q * dw:q * dw + sw * (ow - 1) + 1:sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, p, q])
    return out if b is None else out + b[None, :, None, None]


def np_pool(x, kernel, stride, padding, reduce, dilation=(1, 1), count_include_pad=True):
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    fill = -np.inf if reduce == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    ones = np.pad(np.ones((H, W)), ((ph, ph), (pw, pw)))
    oh = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((N, C, oh, ow))
    for i in range(oh):
        for j in range(ow):
            rs = slice(i * sh, i * sh + dh * (kh - 1) + 1, dh)
            cs = slice(j * sw, j * sw + dw * (kw - 1) + 1, dw)
            win = xp[:, :, rs, cs]
            if reduce == "max":
                out[:, :, i, j] = win.max((2, 3))
            else:
                count = kh * kw if count_include_pad else ones[rs, cs].sum()
                out[:, :, i, j] = win.sum((2, 3)) / count
    return out


def np_adaptive_avg(x, size):
    N, C, H, W = x.shape
    oh, ow = size
    out = np.empty((N, C, oh, ow))
    for i in range(oh):
        r0, r1 = (i * H) // oh, -((-(i + 1) * H) // oh)
        for j in range(ow):
            c0, c1 = (j * W) // ow, -((-(j + 1) * W) // ow)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean((2, 3))
    return out


def forward_from_file(path, x: np.ndarray) -> np.ndarray:
    """G with its masks applied, from nothing but the saved tensors and the graph in the header."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    head = json.loads(read_header(path)["__metadata__"]["slth"])
    nodes = head["graph"]["nodes"]
    vals = {0: x.reshape(len(x), *nodes[0]["shape"])}
    seen = set()
    for i, nd in enumerate(nodes[1:], start=1):
        op, a = nd["op"], nd.get("attrs", {})
        ins = [vals[j] for j in nd["inputs"]]
        h = ins[0]
        if op in ("conv", "linear"):
            k = str(i - 1)
            seen.add(k)
            w = tensors[f"{k}.weight_orig"].astype(np.float64) * tensors[f"{k}.weight_mask"]
            b = None
            if f"{k}.bias_orig" in tensors:
                b = tensors[f"{k}.bias_orig"].astype(np.float64) * tensors[f"{k}.bias_mask"]
            if op == "linear":
                v = h @ w.T + (0 if b is None else b)
            else:
                v = np_conv2d(h, w, b, a["stride"], a["padding"], a["dilation"])
        elif op == "relu":
            v = np.maximum(h, 0.0)
        elif op == "add":
            v = h + ins[1]
        elif op == "flatten":
            v = h.reshape(len(h), -1)
        elif op == "maxpool":
            v = np_pool(h, a["kernel"], a["stride"], a["padding"], "max", a["dilation"])
        elif op == "avgpool":
            v = np_pool(h, a["kernel"], a["stride"], a["padding"], "avg",
                        count_include_pad=a["count_include_pad"])
        elif op == "adaptive_avgpool":
            v = np_adaptive_avg(h, a["output"])
        elif op == "subsample":
            v = h[:, :, ::a["stride"][0], ::a["stride"][1]]
        elif op == "pad_channels":
            v = np.pad(h, ((0, 0), (a["before"], a["after"]), (0, 0), (0, 0)))
        else:
            raise AssertionError(f"unexpected op {op} in a ticket graph")
        vals[i] = v
    # every tensor of the file is a parameter of some node of the graph
    assert {k.split(".")[0] for k in tensors} == seen
    return vals[len(nodes) - 1]


@pytest.mark.parametrize("name, method", [("identity-shortcut-inplace", "pensia"),
                                          ("option-a-shortcut", "pensia"),
                                          ("avgpool-padded", "pensia"),
                                          ("maxpool-k3-s1-p1", "orseau"),
                                          ("adaptive-2x2", "orseau")])
def test_ticket_module_computes_exactly_what_the_saved_masks_say(name, method, tmp_path):
    net = make_target(name)
    domain = ZOO[name][2]
    t = construct(net, method=method, n=SIZES[method], domain=domain, seed=2).ticket
    path = tmp_path / "ticket.safetensors"
    t.save(path)
    x = points_in(domain, net.in_dim, 24, np.random.default_rng(0))
    ref = forward_from_file(path, x)
    scale = max(1.0, float(np.abs(ref).max()))
    assert ref.shape == (24, net.out_dim) and np.abs(ref).max() > 0
    np.testing.assert_allclose(t.forward(x), ref, rtol=0, atol=1e-10 * scale)
    m = t.module()
    assert isinstance(m, torch.fx.GraphModule)
    # prune-style parameters under the file's names, holding the file's numbers
    from safetensors.numpy import load_file
    saved = load_file(str(path))
    state = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    for k, v in saved.items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    with torch.no_grad():
        out = m(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * scale)
    # the graph module also takes images
    with torch.no_grad():
        img = m(torch.from_numpy(x).float().reshape(len(x), *net.in_shape)).double().numpy()
    np.testing.assert_allclose(img, out, rtol=0, atol=1e-6 * scale)


# ---------------------------------------------------------------------------- runs


class Crash(BaseException):
    pass


def crash_after(k):
    def progress(msg, done=None, total=None):
        if msg.endswith(" chunks") and done is not None and done >= k:
            raise Crash
    return progress


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as c:
        yield c


def test_cnn_runs_are_chunk_and_worker_independent_and_resume_after_a_crash(cluster, tmp_path):
    net = make_target("projection-shortcut")
    settings = {"n": 5, "seed": 1}
    one = tmp_path / "one-call.safetensors"
    construct(net, method="pensia", n=5, seed=1).ticket.save(one)
    whole = execute(net, "pensia", settings, runs_dir=tmp_path / "whole", chunk_weights=10 ** 6,
                    evaluate_options=FAST)
    small = execute(net, "pensia", settings, runs_dir=tmp_path / "small", chunk_weights=9,
                    evaluate_options=FAST)
    dist = execute(net, "pensia", settings, runs_dir=tmp_path / "dask", chunk_weights=9,
                   scheduler=cluster.scheduler_address, evaluate_options=FAST)
    # chunks of at most 9 target weights: one output row per chunk, except the 1x1
    # projection (one weight per row: all 4 rows in one chunk)
    chunks = sum(-(-nd.weight.shape[0] // max(1, 9 // int(np.prod(nd.weight.shape[1:]))))
                 for nd in (net.nodes[i] for i in net.affine))
    assert chunks == 4 + 4 + 1 + 3
    assert whole.stats["chunks_total"] == net.depth
    assert small.stats["chunks_total"] == dist.stats["chunks_total"] == chunks
    ref = one.read_bytes()
    assert whole.ticket_path.read_bytes() == ref
    assert small.ticket_path.read_bytes() == ref
    assert dist.ticket_path.read_bytes() == ref
    for k in ("certified_bound", "random_params", "active_params", "max_weight_error"):
        assert small.report[k] == whole.report[k] == dist.report[k], k
    assert whole.report["bound_holds"]

    # a crash after 3 chunks, then the same command: the same bytes, 3 chunks reused
    with pytest.raises(Crash):
        execute(net, "pensia", settings, runs_dir=tmp_path / "crash", chunk_weights=9,
                evaluate_options=FAST, progress=crash_after(3))
    folder = next((tmp_path / "crash").iterdir())
    assert len(list((folder / "chunks").glob("*.npz"))) == 3
    again = execute(net, "pensia", settings, runs_dir=tmp_path / "crash", chunk_weights=10 ** 6,
                    evaluate_options=FAST)
    assert again.folder == folder
    assert (again.stats["chunks_reused"], again.stats["chunks_computed"]) == (3, chunks - 3)
    assert again.ticket_path.read_bytes() == ref


# ---------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("size", [["--n", "4"], ["--eps", "0.5"]])
def test_malach_refuses_a_convolutional_target_with_one_line_naming_the_size(size, run_cli,
                                                                            tmp_path):
    from slth.models import digits_cnn

    torch.manual_seed(0)
    load_target(digits_cnn()).save(tmp_path / "cnn.safetensors")
    code, out, err = run_cli("construct", tmp_path / "cnn.safetensors", "--method", "malach",
                             *size, "--runs-dir", tmp_path / "runs")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("slth: error: malach"), err
    assert "conv" in lines[0] and "Traceback" not in err
    # the size a gadget per target neuron would need: the convolution's output units
    assert "512" in lines[0] and "random parameters" in lines[0], lines[0]
    assert "pensia" in lines[0]


def test_cli_constructs_a_ticket_for_a_digits_cnn_saved_with_its_graph(run_cli, tmp_path):
    from slth.data import load_dataset
    from slth.targets import TrainConfig, train_target

    net, acc = train_target(load_dataset("digits"), TrainConfig(model="digits-cnn", epochs=3))
    assert acc > 0.5
    path = tmp_path / "digits-cnn.safetensors"
    net.save(path)
    back = load_net_safetensors(path)
    assert back.fingerprint() == net.fingerprint()
    code, out, err = run_cli("construct", path, "--n", "6", "--data", "digits", "--seed", "1",
                             "--runs-dir", tmp_path / "runs")
    assert code == 0, err
    folder = next((tmp_path / "runs").iterdir())
    rep = json.loads((folder / "report.json").read_text())
    for k in ("method", "certified_bound", "max_error_found", "bound_holds", "bound_tightness",
              "empirical_max_error", "adversarial_max_error", "target_accuracy",
              "ticket_accuracy", "agreement", "random_params", "active_params", "density",
              "overparam_factor", "width_per_layer", "target_dims", "seconds", "peak_rss_mb",
              "run", "data"):
        assert k in rep, k
    assert rep["method"] == "pensia" and rep["data"] == "digits"
    assert rep["target_dims"][0] == [1, 8, 8] and rep["test_inputs"] == 450
    assert rep["bound_holds"] and rep["max_error_found"] <= rep["certified_bound"]
    assert abs(rep["target_accuracy"] - acc) < 1e-9
    assert rep["agreement"] >= 0.95
    assert abs(rep["ticket_accuracy"] - rep["target_accuracy"]) <= 0.05
    assert (folder / "ticket.safetensors").exists() and (folder / "sparsity_report.json").exists()
    head = json.loads(read_header(folder / "ticket.safetensors")["__metadata__"]["slth"])
    assert head["meta"]["target_fingerprint"] == net.fingerprint() and "graph" in head


def test_width_study_on_a_cnn_target_file_finds_sizes_that_meet_eps(tmp_path):
    from slth.certify import bound_details
    from slth.experiments import width as W

    net = make_target("conv-maxpool-linear")
    path = tmp_path / "cnn.safetensors"
    net.save(path)
    s = W.Settings(methods=["pensia", "malach"], eps_grid=[0.5, 0.1], seeds=1, pensia_seeds=1,
                   trained=False, target=str(path), dims=[4, 4], sweep_d=[4], sweep_depth=[1],
                   workers=1)
    res = W.run(s)
    assert {Path(f).name for f in W.plot(res, tmp_path)} >= {"eps.png"}
    got = res["eps"]["file"]
    assert res["targets"]["file"]["params"] == net.n_params
    assert got["malach"]["size"] == [None, None]          # malach refuses convolutions
    sizes = got["pensia"]["size"]
    assert all(k is not None for k in sizes) and sizes[0] <= sizes[1]
    for eps, k in zip(got["pensia"]["eps"], sizes):       # the size found meets eps, k - 1 not
        bound = bound_details(net, W.effective("pensia", net, k, 0, eps), Domain("box"))
        assert bound["certified_bound"] <= eps
        if k > 1:
            below = bound_details(net, W.effective("pensia", net, k - 1, 0, eps), Domain("box"))
            assert below["certified_bound"] > eps
