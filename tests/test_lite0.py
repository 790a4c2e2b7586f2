"""EfficientNet-Lite0 with its ImageNet weights: real classification, TF "same" padding."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from shiftbench.embedding import embed_files
from shiftbench.embedding.lite0 import EfficientNetLite0, SameConv2d

EGYPTIAN_CAT, ESPRESSO = 285, 967


def _input(rgb: np.ndarray) -> torch.Tensor:
    x = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    return torch.from_numpy((x - 127.0) / 128.0).permute(2, 0, 1)[None].contiguous()


@pytest.mark.parametrize("image, label, min_prob", [("chelsea", EGYPTIAN_CAT, 0.5), ("coffee", ESPRESSO, 0.7)])
def test_imagenet_top1(lite0, image, label, min_prob):
    feats, logits = lite0.embed(_input(getattr(skimage.data, image)()))
    assert feats.shape == (1, lite0.feature_dim) and logits.shape == (1, 1000)
    feats = feats[:, :1280]  # the penultimate view comes first
    prob = logits.softmax(1)[0]
    assert int(prob.argmax()) == label
    assert float(prob[label]) > min_prob
    # the features are the classifier's input: the logits follow from them
    with torch.inference_mode():
        torch.testing.assert_close(lite0.model._fc(feats), logits, rtol=1e-4, atol=1e-4)
    assert (feats >= 0).all() and (feats <= 6).all()  # pooled ReLU6 activations


def test_identity_and_preprocess(lite0):
    ident = lite0.identity
    assert ident["backbone"] == "lite0"
    # penultimate, then the last block at 1/4, 1/8, 1/16 resolution (B0 stage widths)
    assert lite0.views == [("penultimate", 1280), ("stride4", 24), ("stride8", 40), ("stride16", 112)]
    assert ident["views"] == [list(v) for v in lite0.views]
    assert lite0.feature_dim == 1280 + 24 + 40 + 112
    assert len(ident["weights"]) == 64  # sha256 of the weights file
    pre = lite0.preprocess
    assert pre.size == 224 and pre.resize == "squash"
    # (rgb - 127) / 128 written as (rgb/255 - mean) / std
    assert np.allclose(np.array(pre.mean) * 255, 127) and np.allclose(np.array(pre.std) * 255, 128)


def test_pipeline_classifies_a_file(lite0, tmp_path):
    """File -> decode -> resize -> normalise -> model, as embed_files does it."""
    cv2.imwrite(str(tmp_path / "cat.jpg"), skimage.data.chelsea()[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    (batch,) = list(embed_files(tmp_path, ["cat.jpg"], lite0, num_workers=0))
    assert batch.error == [""]
    assert (batch.width[0], batch.height[0]) == (451, 300)
    assert batch.logits.shape == (1, 1000) and int(batch.logits[0].argmax()) == EGYPTIAN_CAT
    ref, _ = lite0.embed(_input(skimage.data.chelsea()))
    # JPEG round trip changes pixels a little, features barely
    a, b = batch.features[0, :1280], ref[0, :1280].numpy()
    assert float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.98


@pytest.mark.parametrize("size", [7, 8, 15, 16, 223, 224])
@pytest.mark.parametrize("kernel, stride", [(1, 1), (3, 1), (3, 2), (5, 2), (5, 1)])
def test_same_conv_output_size(size, kernel, stride):
    conv = SameConv2d(2, 3, kernel, stride)
    out = conv(torch.zeros(1, 2, size, size + 1))
    assert out.shape == (1, 3, math.ceil(size / stride), math.ceil((size + 1) / stride))


def _tap_conv(kernel: int, stride: int, tap: tuple[int, int]) -> SameConv2d:
    conv = SameConv2d(1, 1, kernel, stride)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, tap[0], tap[1]] = 1.0
    return conv


def test_same_conv_pads_bottom_right_on_even_input():
    """TF 'same': stride 2, kernel 3, even input pads 0 top/left and 1 bottom/right."""
    x = torch.arange(1, 17, dtype=torch.float32).view(1, 1, 4, 4)
    out = _tap_conv(3, 2, (0, 0))(x)  # picks the top-left tap of each window
    assert out[0, 0].tolist() == [[1, 3], [9, 11]]
    out = _tap_conv(3, 2, (2, 2))(x)  # bottom-right tap: last window reaches the padding
    assert out[0, 0].tolist() == [[11, 0], [0, 0]]


def test_same_conv_pads_symmetric_on_odd_input():
    x = torch.arange(1, 26, dtype=torch.float32).view(1, 1, 5, 5)
    out = _tap_conv(3, 2, (1, 1))(x)  # centre tap: windows centred on 0, 2, 4
    assert out[0, 0].tolist() == [[1, 3, 5], [11, 13, 15], [21, 23, 25]]


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("h, w", [(8, 8), (9, 9), (8, 11), (2, 3), (1, 1)])
def test_stride2_same_conv_equals_explicit_tf_padding(kernel, h, w):
    """The zero-row kernel trick gives what padding the input TF's way gives, and the same gradients."""
    torch.manual_seed(0)
    conv = SameConv2d(4, 4, kernel, 2, groups=2)
    x = torch.randn(2, 4, h, w)
    ph, pw = (max((-(-n // 2) - 1) * 2 + kernel - n, 0) for n in (h, w))
    want = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]),
        conv.weight, None, 2, 0, 1, 2)
    got = conv(x)
    torch.testing.assert_close(got, want)
    grads = [torch.autograd.grad(y.square().sum(), conv.weight)[0] for y in (got, want)]
    torch.testing.assert_close(*grads)


def test_stride1_same_conv_is_centred():
    x = torch.arange(1, 26, dtype=torch.float32).view(1, 1, 5, 5)
    out = _tap_conv(5, 1, (2, 2))(x)  # centre tap of a 5x5 kernel: identity
    assert torch.equal(out, x)


def test_untrained_lite0_shapes():
    net = EfficientNetLite0(num_classes=7).eval()
    with torch.no_grad():
        x = torch.zeros(2, 3, 32, 32)
        assert net.forward_features(x).shape == (2, 1280)
        assert net(x).shape == (2, 7)
    # B0 topology: 16 MBConv blocks, no squeeze-excitation
    assert len(net._blocks) == 16
    assert not any("_se_" in n for n, _ in net.named_parameters())
