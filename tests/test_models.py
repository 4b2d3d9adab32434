from __future__ import annotations

import json

import pytest
import torch

from covseg.cli import main
from covseg.config import PRESETS, ModelConfig, from_dict, to_dict
from covseg.losses import BifurcatedLoss
from covseg.metrics import dice
from covseg.models import InceptionBlock, SegOutput, build_model, count_parameters

# A narrow config that keeps every structural feature, for fast tests.
TINY = PRESETS["small"].replace(
    encoder_channels=(8, 12, 16, 20, 24),
    lung_decoder_channels=(4, 8, 8, 12, 16),
    infection_decoder_channels=(8, 8, 12, 16, 20),
    fusion_channels=(8, 8, 4),
)


@pytest.mark.parametrize("shape", [(2, 1, 33, 47), (1, 1, 64, 64), (3, 1, 17, 80)])
@pytest.mark.parametrize("model", ["bifurcated", "unet"])
def test_output_shapes_odd_sizes(shape, model):
    net = build_model(TINY.replace(model=model)).eval()
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert isinstance(out, SegOutput)
    assert out.infection.shape == shape
    if model == "bifurcated":
        assert out.lung.shape == shape and out.infection_aux.shape == shape
    else:
        assert out.lung is None and out.infection_aux is None


@pytest.mark.parametrize("gate", ["binary", "soft", "none"])
def test_gradients_reach_all_heads_and_encoder(gate):
    net = build_model(TINY.replace(lung_gate=gate))
    x = torch.randn(2, 1, 32, 32)
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    terms = BifurcatedLoss()(net(x), target, target)
    terms.total.backward()
    groups = {
        "encoder": net.encoder,
        "lung_decoder": net.lung_decoder,
        "infection_decoder": net.infection_decoder,
        "fusion": net.fusion,
        "lung_head": net.lung_head,
        "infection_head": net.infection_head,
    }
    for name, module in groups.items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_binary_gate_passes_fusion_gradient_to_lung_decoder():
    """Straight-through gating: the final-head loss alone still trains the lung decoder."""
    net = build_model(TINY.replace(lung_gate="binary"))
    out = net(torch.randn(2, 1, 32, 32))
    out.infection.sum().backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in net.lung_decoder.parameters())


def test_binary_gate_zeroes_fusion_input_outside_lung():
    """With binary gating the final prediction cannot depend on pixels outside the lung."""
    from covseg.models.bifurcated import lung_gate

    logits = torch.tensor([[[[3.0, -3.0]]]])
    assert lung_gate(logits, "binary").tolist() == [[[[1.0, 0.0]]]]
    assert lung_gate(logits, "soft").detach().tolist()[0][0][0][0] == pytest.approx(0.9526, 1e-3)


def test_inception_block_shape_and_kernels():
    block = InceptionBlock(5, 12, d_rate=3, kernels=((3, 3), (7, 5), (9, 7)))
    assert block(torch.randn(2, 5, 21, 23)).shape == (2, 12, 21, 23)
    convs = [m for m in block.branches.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [3, 3, 7, 5, 9, 7]
    assert [c.dilation[0] for c in convs] == [1, 1, 3, 3, 3, 3]
    assert all(c.out_channels == 6 for c in convs)  # filters / 2 per branch


def test_factorized_inception_keeps_receptive_field():
    """The efficient variant must see as far as the full 9x9 dilated kernel."""
    for factorize in (False, True):
        net = InceptionBlock(1, 4, d_rate=3, dropout=0, factorize=factorize).eval()
        for m in net.modules():  # a positive BN shift keeps every ReLU passing gradient
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.constant_(m.bias, 10.0)
        x = torch.rand(1, 1, 97, 97, requires_grad=True)
        net(x)[0, :, 48, 48].sum().backward()
        rows = (x.grad[0, 0].abs().sum(1) > 0).nonzero()
        assert int(rows.max() - rows.min()) >= 2 * 12  # 9x9 dil 3 reaches 12 px each side


def test_preset_parameter_counts():
    paper = count_parameters(build_model(PRESETS["paper"]))
    small = count_parameters(build_model(PRESETS["small"]))
    assert 15_000_000 <= paper <= 25_000_000  # authors' Keras model: 20,500,413
    assert small <= 2_000_000


def test_model_config_json_round_trip():
    cfg = PRESETS["small"].replace(lung_gate="soft", inception_kernels=((3, 3), (7, 5), (9, 7)))
    again = from_dict(ModelConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown field"):
        from_dict(ModelConfig, {**to_dict(cfg), "colour": "red"})


def test_model_info_json(capsys):
    assert main(["model-info", "--preset", "small", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"preset", "params", "outputs"}
    assert info["outputs"] == {k: [1, 1, 256, 256] for k in ("lung", "infection_aux", "infection")}


def test_small_model_overfits_one_synthetic_slice():
    """Learning, not just running: one phantom slice is memorised within 150 steps."""
    from covseg.data.preprocess import normalize_intensity
    from covseg.data.synthetic import make_phantom

    hu, lung, inf = make_phantom(seed=3, shape=(64, 64, 8))
    k = int(inf.reshape(-1, 8).sum(0).argmax())
    x = torch.from_numpy(normalize_intensity(hu[..., k], "hu"))[None, None].float()
    y_lung = torch.from_numpy(lung[..., k] > 0)[None, None].float()
    y_inf = torch.from_numpy(inf[..., k] > 0)[None, None].float()
    assert y_inf.sum() > 20
    net = build_model(TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = BifurcatedLoss()
    for _ in range(150):
        opt.zero_grad()
        loss_fn(net(x), y_lung, y_inf).total.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(x).infection > 0
    d = float(dice(*[int(c) for c in _counts(pred, y_inf > 0)]))
    assert d > 0.9


def _counts(pred: torch.Tensor, truth: torch.Tensor):
    return (
        (pred & truth).sum(),
        (pred & ~truth).sum(),
        (~pred & truth).sum(),
        (~pred & ~truth).sum(),
    )


@pytest.mark.parametrize("shape", [(2, 3, 21, 17), (1, 5, 4, 9), (2, 2, 2, 3)])
def test_separable_max_pool_equals_max_pool_in_both_paths(shape):
    """The inference path (shifted maxima) and the autograd path both equal MaxPool2d(7, 1, 3)."""
    from covseg.models.blocks import SeparableMaxPool

    pool = SeparableMaxPool(7)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    ref = torch.nn.functional.max_pool2d(x, 7, 1, 3)
    with torch.inference_mode():
        assert torch.equal(pool(x), ref)
    xg = x.clone().requires_grad_(True)
    y = pool(xg)
    assert torch.equal(y.detach(), ref)
    y.sum().backward()  # the training path stays differentiable
    assert xg.grad is not None and xg.grad.sum() > 0


def test_fold_batchnorm_keeps_outputs():
    """Folding BN into the convolutions (inference) changes outputs only by rounding."""
    import copy

    from covseg.models.blocks import fold_batchnorm

    torch.manual_seed(0)
    net = build_model(TINY).train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(5):
            net(torch.rand(2, 1, 48, 48) * 3 + 1)
    net.eval()
    folded = fold_batchnorm(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 1, 40, 56) * 3 + 1
    with torch.inference_mode():
        for a, b in zip(net(x), folded(x), strict=True):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(build_model(TINY).train())


def test_one_channel_tensors_keep_cat_channels_last():
    """A 1-channel input must not turn a concatenation into NCHW (a copy per later conv)."""
    from covseg.models.blocks import channels_last

    one = channels_last(torch.rand(2, 1, 8, 8))
    many = torch.rand(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    out = torch.cat([one, many], dim=1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[:, :1], one)
