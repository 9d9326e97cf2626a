"""MIL aggregators: Mamba blocks vs naive implementations, SRMamba reorder, outputs, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mambamil.errors import CheckpointError
from mambamil.models import create_model, list_models, load_checkpoint, save_checkpoint
from mambamil.models.mamba import BiMamba, Mamba, SRMamba, sr_reorder, sr_restore
from mambamil.ops import selective_scan_reference

HAS_CUDA = torch.cuda.is_available()

# parameter names of isyangshu/MambaMIL's MambaMIL with SRMamba/BiMamba layers (models/MambaMIL.py,
# mamba/mamba_ssm/modules/srmamba.py)
ORIGINAL_LAYER_KEYS = [
    "0.weight", "0.bias", "1.A_log", "1.A_b_log", "1.D", "1.D_b", "1.in_proj.weight",
    "1.conv1d.weight", "1.conv1d.bias", "1.conv1d_b.weight", "1.conv1d_b.bias", "1.x_proj.weight",
    "1.x_proj_b.weight", "1.dt_proj.weight", "1.dt_proj.bias", "1.dt_proj_b.weight", "1.dt_proj_b.bias",
    "1.out_proj.weight",
]  # fmt: skip
ORIGINAL_TOP_KEYS = [
    "_fc1.0.weight", "_fc1.0.bias", "norm.weight", "norm.bias", "classifier.weight", "classifier.bias",
    "attention.0.weight", "attention.0.bias", "attention.2.weight", "attention.2.bias",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def naive_reorder(x: torch.Tensor, rate: int) -> tuple[torch.Tensor, list[int]]:
    """Index-based SRMamba reorder: pad with zeros, then positions 0, r, 2r, ..., 1, r+1, ..."""
    L = x.shape[-1]
    Lp = math.ceil(L / rate) * rate
    xp = F.pad(x, (0, Lp - L))
    order = [i for w in range(rate) for i in range(w, Lp, rate)]
    return xp[..., order], order


def naive_restore(y: torch.Tensor, order: list[int], L: int) -> torch.Tensor:
    out = torch.empty_like(y)
    out[..., order] = y
    return out[..., :L]


@pytest.mark.parametrize("L,rate", [(1, 10), (7, 10), (10, 10), (23, 5), (100, 7), (12, 1)])
def test_sr_reorder_matches_naive(L, rate):
    x = torch.randn(2, 3, L)
    ours = sr_reorder(x, rate)
    ref, order = naive_reorder(x, rate)
    assert torch.equal(ours, ref)
    assert torch.equal(sr_restore(ours, rate, L), x)
    assert torch.equal(naive_restore(ref, order, L), x)


def naive_branch(m: Mamba, xz: torch.Tensor, suffix: str) -> torch.Tensor:
    """mamba-ssm's slow path for one branch, with the float64 sequential reference scan."""
    conv = getattr(m, "conv1d" + suffix)
    x, z = xz.chunk(2, dim=1)
    L = x.shape[-1]
    x = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=m.d_conv - 1, groups=m.d_inner)[..., :L])
    x_dbl = getattr(m, "x_proj" + suffix)(x.transpose(1, 2))
    dt, B, C = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt_proj = getattr(m, "dt_proj" + suffix)
    delta = (dt @ dt_proj.weight.T).transpose(1, 2)
    A = -torch.exp(getattr(m, "A_log" if not suffix else "A_b_log").double())
    return selective_scan_reference(
        x.double(), delta.double(), A, B.transpose(1, 2).double(), C.transpose(1, 2).double(),
        getattr(m, "D" + suffix).double(), z.double(), dt_proj.bias.double(), True,
    ).float()  # fmt: skip


@pytest.mark.parametrize("cls", [Mamba, SRMamba, BiMamba])
@pytest.mark.parametrize("L", [1, 9, 40])
def test_mamba_blocks_match_naive(cls, L):
    m = cls(d_model=32)
    h = torch.randn(1, L, 32)
    xz = m.in_proj(h).transpose(1, 2)
    y = naive_branch(m, xz, "")
    rate = 4
    if cls is SRMamba:
        xz_b, order = naive_reorder(xz, rate)
        y = y + naive_restore(naive_branch(m, xz_b, "_b"), order, L)
        out = m(h, rate=rate)
    elif cls is BiMamba:
        y = y + naive_branch(m, xz.flip(-1), "_b").flip(-1)
        out = m(h)
    else:
        out = m(h)
    ref = m.out_proj(y.transpose(1, 2))
    assert out.shape == (1, L, 32)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the inference path (in-place, per-branch out_proj) gives the same result
        out_ng = m(h, rate=rate) if cls is SRMamba else m(h)
    torch.testing.assert_close(out_ng, ref, rtol=1e-4, atol=1e-5)


def test_state_dict_keys_are_the_original_ones():
    m = create_model("mambamil", 1024, 2, layer="srmamba", n_layers=2)
    expected = set(ORIGINAL_TOP_KEYS) | {f"layers.{i}.{k}" for i in range(2) for k in ORIGINAL_LAYER_KEYS}
    assert set(m.state_dict()) == expected
    sd = m.state_dict()
    assert sd["layers.0.1.in_proj.weight"].shape == (2048, 512)
    assert sd["layers.0.1.x_proj.weight"].shape == (32 + 32, 1024)  # dt_rank = ceil(512 / 16) = 32
    assert sd["layers.0.1.conv1d.weight"].shape == (1024, 1, 4)
    assert sd["layers.0.1.A_log"].shape == (1024, 16)
    plain = create_model("mambamil", 64, 2, layer="mamba", n_layers=1)
    assert not any("_b" in k.split(".")[-2] or k.endswith("_b_log") for k in plain.state_dict())


@pytest.mark.parametrize("name", ["mambamil", "abmil", "transmil", "mean", "max"])
@pytest.mark.parametrize("task", ["classification", "survival"])
def test_outputs_contract(name, task):
    m = create_model(name, 48, 4, task=task).eval()
    assert (m.in_dim, m.n_classes, m.task) == (48, 4, task)
    for bag in (torch.randn(1, 48), torch.randn(1, 1, 48), torch.randn(57, 48)):
        n = bag.shape[-2]
        out = m(bag)
        assert out["logits"].shape == (1, 4)
        assert out["attention"].shape == (1, n) and out["attention_raw"].shape == (1, n)
        assert torch.isfinite(out["attention"]).all() and (out["attention"] >= 0).all()
        torch.testing.assert_close(out["attention"].sum(), torch.tensor(1.0))
        if task == "survival":
            hz = torch.sigmoid(out["logits"])
            torch.testing.assert_close(out["hazards"], hz)
            torch.testing.assert_close(out["S"], torch.cumprod(1 - hz, dim=1))
            torch.testing.assert_close(out["risk"], -out["S"].sum(dim=1))
        else:
            assert "hazards" not in out


def test_attention_semantics_of_pooling_baselines():
    x = torch.randn(20, 16)
    mean = create_model("mean", 16, 2).eval()
    torch.testing.assert_close(mean(x)["attention"], torch.full((1, 20), 1 / 20))
    mx = create_model("max", 16, 2, hidden=32).eval()
    out = mx(x)
    h = mx.fc(x)
    wins = torch.bincount(h.argmax(0), minlength=20).float()
    torch.testing.assert_close(out["attention"][0], wins / 32)
    torch.testing.assert_close(out["attention_raw"][0], wins)


def test_mambamil_attention_is_softmax_of_raw():
    m = create_model("mambamil", 32, 2, rate=5).eval()
    out = m(torch.randn(33, 32))
    torch.testing.assert_close(out["attention"], F.softmax(out["attention_raw"], dim=1))


@pytest.mark.parametrize("layer", ["srmamba", "bimamba", "mamba"])
def test_mambamil_train_step(layer):
    m = create_model("mambamil", 32, 3, layer=layer, rate=5, n_layers=2, d_model=64)
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    out = m(torch.randn(77, 32))
    loss = F.cross_entropy(out["logits"], torch.tensor([1]))
    loss.backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m.layers[0][1].A_log.grad.abs().sum() > 0
    opt.step()


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    a = create_model("mambamil", 16, 2, d_model=32, dropout=0.0)
    b = create_model("mambamil", 16, 2, d_model=32, dropout=0.0, grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(50, 16)
    for m in (a, b):
        m(x)["logits"].sum().backward()
    for (k, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=k)


def test_inits():
    xav = create_model("mambamil", 32, 2, d_model=64, init="xavier")
    assert torch.all(xav.layers[0][1].dt_proj.bias == 0)  # the original code wipes Mamba's Δ init
    mam = create_model("mambamil", 32, 2, d_model=64, init="mamba")
    dt = F.softplus(mam.layers[0][1].dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert torch.all(mam.classifier.bias == 0)


def test_mambamil_bag_of_10k_instances():
    m = create_model("mambamil", 64, 2, rate=10).eval()
    x = torch.randn(10_000, 64)
    with torch.no_grad():
        out = m(x)
        small = m(x[:3])
    assert out["attention"].shape == (1, 10_000)
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["attention"]).all()
    torch.testing.assert_close(out["attention"].sum(), torch.tensor(1.0))
    assert small["attention"].shape == (1, 3)


def test_transmil_bag_of_10k_instances():
    m = create_model("transmil", 32, 2).eval()
    with torch.no_grad():
        out = m(torch.randn(10_000, 32))
    assert out["attention"].shape == (1, 10_000) and torch.isfinite(out["logits"]).all()


@pytest.mark.parametrize("name", ["mambamil", "abmil", "transmil", "mean", "max"])
def test_checkpoint_round_trip(tmp_path, name):
    m = create_model(name, 24, 3, task="survival").eval()
    path = save_checkpoint(tmp_path / "ck" / "model.pt", m, {"epoch": 3, "metric": 0.5})
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    payload = torch.load(path, weights_only=True)
    assert payload["model"] == name and payload["config"]["in_dim"] == 24
    m2, extra = load_checkpoint(path)
    assert extra == {"epoch": 3, "metric": 0.5}
    assert type(m2) is type(m) and m2.config == m.config and not m2.training
    x = torch.randn(11, 24)
    with torch.no_grad():
        for k, v in m(x).items():
            torch.testing.assert_close(m2(x)[k], v)


def test_save_checkpoint_rejects_reserved_keys(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "m.pt", create_model("mean", 4, 2), {"state_dict": 1})


def test_load_checkpoint_errors(tmp_path):
    src = create_model("mambamil", 40, 3, n_layers=1).state_dict()
    bad = {k: v for k, v in src.items() if "conv1d_b" not in k}
    bad["layers.0.1.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    meta = {"layer": "srmamba", "rate": 10, "task": "classification", "classes": ["a", "b", "c"]}
    with pytest.raises(CheckpointError, match=r"bad\.pt.*missing keys.*conv1d_b.*unexpected keys.*extra") as e:
        load_checkpoint(path, original=meta)
    assert "\n" not in str(e.value)
    torch.save({"foo": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"bad\.pt: neither a mambamil checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    # A project checkpoint whose config no longer builds a model: an error naming the file, not a bare ValueError.
    good = save_checkpoint(tmp_path / "good.pt", create_model("mean", 4, 2))
    obj = torch.load(good, weights_only=True)
    torch.save({**obj, "config": {**obj["config"], "name": "clam"}, "model": "clam"}, path)
    with pytest.raises(CheckpointError, match=r"bad\.pt: cannot rebuild its model 'clam'.*unknown model"):
        load_checkpoint(path)
    torch.save({**obj, "config": {**obj["config"], "nonsense": 1}}, path)
    with pytest.raises(CheckpointError, match=r"bad\.pt: cannot rebuild its model 'mean'.*bad arguments"):
        load_checkpoint(path)
    obj["state_dict"] = {k: v[..., :1] for k, v in obj["state_dict"].items()}
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"bad\.pt: checkpoint shapes differ"):
        load_checkpoint(path)


def test_registry_and_errors():
    assert list_models() == ["abmil", "mambamil", "mambamil_2d", "max", "mean", "transmil"]
    assert type(create_model("max", 8, 2)).__name__ == "MaxMIL"
    assert type(create_model("mean", 8, 2)).__name__ == "MeanMIL"
    with pytest.raises(ValueError, match="unknown model"):
        create_model("clam", 8, 2)
    with pytest.raises(ValueError, match="bad arguments"):
        create_model("mean", 8, 2, nonsense=1)
    with pytest.raises(ValueError, match="unknown MambaMIL layer"):
        create_model("mambamil", 8, 2, layer="s4")
    with pytest.raises(ValueError, match="unknown task"):
        create_model("abmil", 8, 2, task="regression")
    m = create_model("abmil", 8, 2)
    with pytest.raises(ValueError, match="feature dim"):
        m(torch.randn(5, 9))
    with pytest.raises(ValueError, match="empty bag"):
        m(torch.randn(0, 8))
    with pytest.raises(ValueError, match="one bag"):
        m(torch.randn(2, 5, 8))
    rebuilt = create_model(**m.config)
    assert rebuilt.config == m.config


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_mambamil_on_cuda_matches_cpu():
    m = create_model("mambamil", 64, 2, rate=5).eval()
    x = torch.randn(500, 64)
    with torch.no_grad():
        ref = m(x)["logits"]
        out = m.cuda()(x.cuda())["logits"].cpu()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


def test_resolve_device_and_autocast_policies():
    """One resolve_device for features and MIL stages; the MIL autocast accepts only fp32/bf16."""
    from mambamil.device import encoder_autocast, mil_autocast, resolve_device, resolve_encoder_precision
    from mambamil.errors import MambamilError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MambamilError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(MambamilError, match="CUDA is not available"):
                resolve_device(name)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        mil_autocast(cpu, "fp16")
    assert resolve_encoder_precision("bf16", cpu) == "fp32"
    with mil_autocast(cpu, "bf16"), encoder_autocast(cpu, "fp16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
