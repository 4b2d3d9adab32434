from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from covseg.cli import main
from covseg.config import PRESETS, ModelConfig, from_dict, to_dict
from covseg.evaluation.metrics import dice
from covseg.models import InceptionBlock, SegOutput, build_model, count_parameters
from covseg.training.losses import BifurcatedLoss

# Narrow widths that keep every structural feature, for fast tests.
TINY_WIDTHS = {
    "encoder_channels": (8, 12, 16, 20, 24),
    "lung_decoder_channels": (4, 8, 8, 12, 16),
    "infection_decoder_channels": (8, 8, 12, 16, 20),
    "fusion_channels": (8, 8, 4),
}
TINY = PRESETS["small"].replace(**TINY_WIDTHS)
# The same widths with the fast4 preset's structure (4x4 stem, H/4 levels, two-step refinement).
FAST_TINY = PRESETS["fast4"].replace(**TINY_WIDTHS, refine_channels=4)
# ... with the options of the refinement: lung logits refined too, two layers at H/2.
FAST_TINY_LR = FAST_TINY.replace(lung_refine_channels=4, refine_half_depth=2)
# ... and with the fast preset's (learned stride-2 conv stem, H/2 levels, paper fusion inputs).
CONV_TINY = PRESETS["fast"].replace(**TINY_WIDTHS, stem_channels=8, refine_channels=4)
# ... with the input histogram-equalised inside the network.
FAST_TINY_EQ = FAST_TINY.replace(input_norm="equalize")
CONFIGS = {
    "tiny": TINY,
    "fast_tiny_eq": FAST_TINY_EQ,
    "fast_tiny": FAST_TINY,
    "fast_tiny_lr": FAST_TINY_LR,
    "conv_tiny": CONV_TINY,
}


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("shape", [(2, 1, 33, 47), (1, 1, 64, 64), (3, 1, 17, 80)])
@pytest.mark.parametrize("model", ["bifurcated", "unet"])
def test_output_shapes_odd_sizes(shape, model, cfg):
    net = build_model(CONFIGS[cfg].replace(model=model)).eval()
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert isinstance(out, SegOutput)
    assert out.infection.shape == shape
    if model == "bifurcated":
        assert out.lung.shape == shape and out.infection_aux.shape == shape
    else:
        assert out.lung is None and out.infection_aux is None


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("gate", ["binary", "soft", "none"])
def test_gradients_reach_all_heads_and_encoder(gate, cfg):
    net = build_model(CONFIGS[cfg].replace(lung_gate=gate))
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


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
def test_binary_gate_passes_fusion_gradient_to_lung_decoder(cfg):
    """Straight-through gating: the final-head loss alone still trains the lung decoder."""
    net = build_model(CONFIGS[cfg].replace(lung_gate="binary"))
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
    assert _overfit_dice(TINY, x, y_lung, y_inf) > 0.9


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


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
def test_fold_batchnorm_keeps_outputs(cfg):
    """Folding BN into the convolutions (inference) changes outputs only by rounding."""
    import copy

    from covseg.models.blocks import fold_batchnorm

    torch.manual_seed(0)
    net = build_model(CONFIGS[cfg]).train()
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
        fold_batchnorm(build_model(CONFIGS[cfg]).train())


def test_one_channel_tensors_keep_cat_channels_last():
    """A 1-channel input must not turn a concatenation into NCHW (a copy per later conv)."""
    from covseg.models.blocks import channels_last

    one = channels_last(torch.rand(2, 1, 8, 8))
    many = torch.rand(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    out = torch.cat([one, many], dim=1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[:, :1], one)


@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("factorize", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_fold_batchnorm_conv_variants_to_1e5(separable, factorize, stride):
    """Every ConvBNReLU layout (separable, factorised, strided) folds to 1e-5."""
    from covseg.models.blocks import ConvBNReLU, fold_batchnorm

    torch.manual_seed(0)
    block = ConvBNReLU(6, 5, 5, 2, factorize=factorize, separable=separable, stride=stride)
    with torch.no_grad():
        for _ in range(5):
            block(torch.randn(2, 6, 19, 23) * 2 + 1)
    block.eval()
    x = torch.randn(2, 6, 19, 23) * 2 + 1
    with torch.inference_mode():
        ref = block(x)
        folded = fold_batchnorm(copy.deepcopy(block))(x)
    assert ref.shape == (2, 5, -(-19 // stride), -(-23 // stride))
    assert torch.allclose(ref, folded, atol=1e-5, rtol=1e-5)


def test_shipped_checkpoint_is_a_preset_whose_state_dict_is_unchanged():
    """The shipped checkpoint loads strictly and is one of the presets: the fields added since
    (stems, refinement, ...) default to networks whose parameters it still matches."""
    from pathlib import Path

    from covseg.checkpoint import load_checkpoint

    weights = Path(__file__).parents[1] / "src/covseg/pretrained/model.safetensors"
    if not weights.exists():
        pytest.skip("no shipped checkpoint")
    model, meta = load_checkpoint(weights)  # strict=True inside
    names = [n for n, cfg in PRESETS.items() if cfg == meta.model_config]
    assert names, f"the shipped model is no preset: {meta.model_config}"
    expected = build_model(PRESETS[names[0]]).state_dict()
    got = model.state_dict()
    assert list(got) == list(expected)
    assert all(got[k].shape == expected[k].shape for k in got)


@pytest.mark.parametrize("preset, divisor, side", [("fast", 32, 32), ("fast4", 64, 16)])
def test_fast_preset_structure_and_size(preset, divisor, side):
    """Nothing heavy at full resolution: the stem reduces the input before any inception block
    (to H/2 for ``fast``, H/4 for ``fast4``)."""
    cfg = PRESETS[preset]
    assert cfg.stem != "none"
    net = build_model(cfg)
    assert count_parameters(net) <= 2_000_000
    assert net.divisor == divisor
    seen = {}

    def record(name):
        def hook(_m, _i, out):
            seen[name] = out.shape[-1]

        return hook

    for name, m in net.named_modules():
        if isinstance(m, InceptionBlock):
            m.register_forward_hook(record(name))
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 1, 64, 64))
    assert len(seen) == 4 and max(seen.values()) == side  # encoder, 2 decoders, fusion
    assert all(t.shape == (1, 1, 64, 64) for t in out)


def test_lung_refinement_starts_from_the_upsampled_logits():
    """Its residual heads start at zero: training begins from the bilinear lung logits (two 2x
    steps), and the refined lungs then gate the fusion block's full-resolution image."""
    from covseg.models.bifurcated import upsample

    torch.manual_seed(0)
    net = build_model(FAST_TINY_LR).eval()
    assert net.lung_refine is not None and build_model(FAST_TINY).lung_refine is None
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        coarse = upsample(upsample(net.lung_head(net.lung_decoder(net.encoder(x))), 2), 2)
        assert torch.allclose(net(x).lung, coarse, atol=1e-6)
        torch.nn.init.normal_(net.lung_refine.head.weight)  # a trained residual changes them
        assert not torch.allclose(net(x).lung, coarse, atol=1e-3)


@pytest.mark.parametrize(
    "field, value", [("refine_half_depth", 0), ("lung_refine_channels", -1), ("refine_channels", 0)]
)
def test_refinement_options_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        FAST_TINY.replace(**{field: value})


@pytest.mark.parametrize("cfg", ["fast_tiny", "conv_tiny"])
@pytest.mark.parametrize("model", ["bifurcated", "unet"])
def test_fast_receptive_field_reaches_40_px(model, cfg):
    """The final infection logit at the centre depends on pixels >= 40 px away."""
    net = build_model(CONFIGS[cfg].replace(model=model, dropout=0.0)).eval()
    for m in net.modules():  # a positive BN shift keeps every ReLU passing gradient
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.constant_(m.bias, 10.0)
    x = torch.rand(1, 1, 128, 128, requires_grad=True)
    net(x).infection[0, 0, 64, 64].backward()
    ys, xs = (x.grad[0, 0].abs() > 0).nonzero(as_tuple=True)
    reach = int(torch.maximum((ys - 64).abs(), (xs - 64).abs()).max())
    assert reach >= 40


def test_shipped_model_is_the_fast4_preset():
    """``covseg model-info --preset fast4`` describes the architecture of the shipped model."""
    from covseg.checkpoint import load_checkpoint

    _, meta = load_checkpoint("pretrained")
    assert meta.model_config == PRESETS["fast4"]


def test_fast_model_info_json(capsys):
    assert main(["model-info", "--preset", "fast", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "fast" and info["params"] == count_parameters(
        build_model(PRESETS["fast"])
    )
    assert info["outputs"] == {k: [1, 1, 256, 256] for k in ("lung", "infection_aux", "infection")}


@pytest.mark.parametrize("cfg", ["fast_tiny", "conv_tiny"])
def test_fast_overfits_one_synthetic_slice(cfg):
    """The half-resolution network with its full-resolution refinement still learns a slice."""
    from covseg.data.preprocess import normalize_intensity
    from covseg.data.synthetic import make_phantom

    torch.manual_seed(0)
    hu, lung, inf = make_phantom(seed=3, shape=(128, 128, 8))  # 32 x 32 at H/4
    k = int(inf.reshape(-1, 8).sum(0).argmax())
    x = torch.from_numpy(normalize_intensity(hu[..., k], "hu"))[None, None].float()
    y_lung = torch.from_numpy(lung[..., k] > 0)[None, None].float()
    y_inf = torch.from_numpy(inf[..., k] > 0)[None, None].float()
    assert _overfit_dice(CONFIGS[cfg], x, y_lung, y_inf) > 0.9


@pytest.mark.parametrize("cfg", ["fast_tiny", "conv_tiny", "fast_tiny_eq"])
def test_fast_onnx_export_matches_torch(tmp_path, cfg):
    """The stems (space-to-depth, strided conv), bilinear up-sampling and refinement export to
    ONNX."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import numpy as np

    from covseg.models.blocks import fold_batchnorm

    class Heads(torch.nn.Module):  # as covseg's exporter wraps the model: a tuple of 3 heads
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return tuple(self.net(x))

    torch.manual_seed(0)
    wrapped = Heads(fold_batchnorm(build_model(CONFIGS[cfg]).eval())).eval()
    path = tmp_path / "fast.onnx"
    names = ["lung", "infection_aux", "infection"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            wrapped,
            (torch.zeros(2, 1, 64, 64),),
            str(path),
            input_names=["image"],
            output_names=names,
            dynamic_axes={n: {0: "batch"} for n in ("image", *names)},
            opset_version=17,
            dynamo=False,
        )
    x = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)
    with torch.inference_mode():
        ref = wrapped(torch.from_numpy(x))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x}
    )
    for a, b in zip(got, ref, strict=True):
        assert a.shape == (3, 1, 64, 64)
        assert np.abs(a - b.numpy()).max() < 1e-3


def _overfit_dice(cfg, x, y_lung, y_inf) -> float:
    """Dice of the final head after 150 Adam steps on one slice (learning happens)."""
    net = build_model(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = BifurcatedLoss()
    for _ in range(150):
        opt.zero_grad()
        loss_fn(net(x), y_lung, y_inf).total.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(x).infection > 0
    return float(dice(*[int(c) for c in _counts(pred, y_inf > 0)]))


def _levels_picture(seed: int, levels: int = 16, shape=(2, 1, 40, 56)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, shape, generator=g).float() / levels


def test_equalize_mid_ranks_by_hand():
    """Each value becomes (#below + #equal / 2) / #pixels, per slice; ties stay one value."""
    from covseg.models.blocks import HistogramEqualize

    x = torch.tensor([[[[0.0, 0.0, 0.5, 1.0]]], [[[0.2, 0.2, 0.2, 0.2]]]])
    out = HistogramEqualize()(x)
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.25, 0.25, 0.625, 0.875]))
    assert torch.allclose(out[1], torch.full((1, 1, 4), 0.5))  # a constant slice: 0.5
    # values outside [0, 1] count as the ends, and the dtype is kept
    y = HistogramEqualize()(torch.tensor([[[[-3.0, 0.0, 1.0, 7.0]]]], dtype=torch.float64))
    assert y.dtype == torch.float64 and torch.allclose(y[0, 0, 0, :2], y.new_tensor([0.25] * 2))
    z = HistogramEqualize()(torch.tensor([[[[float("nan"), 0.0, 1.0, float("inf")]]]]))
    assert torch.allclose(z, torch.tensor([[[[0.25, 0.25, 0.75, 0.75]]]]))


def test_equalize_ignores_monotone_intensity_changes_and_other_slices():
    """A gamma, a linear window that clips nothing, a min-max stretch: the same picture."""
    from covseg.models.blocks import HistogramEqualize

    he = HistogramEqualize()
    x = _levels_picture(0)
    ref = he(x)
    for f in (lambda t: t**2, lambda t: t**0.5, lambda t: 0.1 + 0.8 * t, lambda t: t / t.max()):
        assert torch.equal(he(f(x)), ref)
    assert torch.equal(he(x[1:]), ref[1:])  # each slice on its own histogram
    assert not torch.equal(he(x.flip(-1)), ref)  # it is a function of the picture


def test_equalized_network_segments_a_regamma_the_same():
    """With ``input_norm="equalize"`` a re-windowed picture gives the same logits; without, not."""
    x = _levels_picture(1, shape=(2, 1, 64, 64))
    for norm, same in (("equalize", True), ("none", False)):
        torch.manual_seed(0)
        net = build_model(FAST_TINY.replace(input_norm=norm)).eval()
        with torch.inference_mode():
            a, b = net(x).infection, net(0.05 + 0.9 * x**1.5).infection
        assert torch.equal(a, b) is same


def test_input_norm_is_checked_and_recorded_in_checkpoints(tmp_path):
    from covseg.checkpoint import load_checkpoint, save_checkpoint
    from covseg.meta import CheckpointMeta
    from covseg.models.blocks import HistogramEqualize

    with pytest.raises(ValueError, match="input_norm"):
        FAST_TINY.replace(input_norm="clahe")
    assert all(cfg.input_norm == "none" for cfg in PRESETS.values())
    old = to_dict(FAST_TINY)
    del old["input_norm"]  # a checkpoint written before the option loads as before
    assert from_dict(ModelConfig, old) == FAST_TINY
    net = build_model(FAST_TINY_EQ)
    path = save_checkpoint(
        tmp_path / "eq.safetensors", net, CheckpointMeta(model_config=FAST_TINY_EQ)
    )
    model, meta = load_checkpoint(path)
    assert meta.model_config.input_norm == "equalize"
    assert isinstance(model.input_norm, HistogramEqualize)
