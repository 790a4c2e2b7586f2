"""Loading backbones: torchvision names, user state dicts, TorchScript, devices, refusals."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch
import torchvision
from conftest import TinyNet, save_torchscript
from torch import nn

from shiftbench.embedding import BackboneError, Preprocess, load_backbone, resolve_device
from shiftbench.embedding.backbones import load_state_dict


class NotATensor:
    """Pickled inside a checkpoint: must never be unpickled."""

    def __init__(self):
        self.payload = [1, 2, 3]


def _x(n: int = 2, seed: int = 0, size: int = 64) -> torch.Tensor:
    """Random input; the models are fully convolutional, so small inputs keep tests fast."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.fixture(scope="module")
def resnet7():
    """A 7-class resnet18 with non-default weights, and its features/logits on a fixed input."""
    torch.manual_seed(123)
    model = torchvision.models.resnet18(num_classes=7).eval()
    with torch.no_grad():  # make BN statistics non-trivial so a wrong load shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        x = _x()
        feats = torch.flatten(model.avgpool(nn.Sequential(*list(model.children())[:-2])(x)), 1)
        logits = model(x)
    return model, x, feats, logits


def test_torchvision_random_init_penultimate_view_from_code():
    bb = load_backbone("mobilenet_v3_small", weights="none", device="cpu", layers=False)
    ref = torchvision.models.mobilenet_v3_small()
    assert bb.views == [("penultimate", _last_linear(ref).in_features)] == [("penultimate", 1024)]
    assert bb.feature_dim == 1024
    assert bb.weights_id == "random-init-seed0"
    assert bb.preprocess == Preprocess()  # ImageNet default
    feats, logits = bb.embed(_x())
    assert feats.shape == (2, 1024) and logits.shape == (2, 1000)
    with torch.inference_mode():  # features are exactly the last Linear's input
        torch.testing.assert_close(_last_linear(bb.model)(feats), logits, rtol=1e-4, atol=1e-4)
    # seeded: the same random model every time
    torch.manual_seed(0)
    ref_sd = torchvision.models.mobilenet_v3_small().state_dict()
    unfolded = load_backbone("mobilenet_v3_small", weights="none", device="cpu", layers=False, fuse=False)
    assert all(torch.equal(v, ref_sd[k]) for k, v in unfolded.model.state_dict().items())


def test_early_layer_views_are_pooled_stage_outputs(resnet7, tmp_path):
    """resnet18: stride 4/8/16 views are the spatial means of layer1/2/3, after the penultimate."""
    model, x, feats, logits = resnet7
    path = tmp_path / "mine.pt"
    torch.save(model.state_dict(), path)
    bb = load_backbone("resnet18", weights=str(path), device="cpu")
    assert bb.views == [("penultimate", 512), ("stride4", 64), ("stride8", 128), ("stride16", 256)]
    assert bb.feature_dim == 512 + 64 + 128 + 256
    assert bb.identity["views"] == [["penultimate", 512], ["stride4", 64], ["stride8", 128],
                                    ["stride16", 256]]
    got, got_logits = bb.embed(x)
    stages = {}
    hooks = [getattr(model, f"layer{i}").register_forward_hook(
        lambda _m, _a, out, i=i: stages.__setitem__(i, out.mean((2, 3)))) for i in (1, 2, 3)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got[:, :512], feats, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[:, 512:576], stages[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[:, 576:704], stages[2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[:, 704:], stages[3], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_logits, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_user_state_dict_class_count_read_from_file(resnet7, tmp_path, suffix):
    model, x, feats, logits = resnet7
    path = tmp_path / f"mine{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    bb = load_backbone("resnet18", weights=str(path), device="cpu", layers=False)
    assert bb.feature_dim == 512
    assert bb.weights_id == hashlib.sha256(path.read_bytes()).hexdigest()
    got_f, got_l = bb.embed(x.contiguous(memory_format=torch.channels_last))
    assert got_l.shape == (2, 7)
    torch.testing.assert_close(got_f, feats, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_l, logits, rtol=1e-4, atol=1e-4)


def test_checkpoint_wrappers_and_dataparallel_prefix(resnet7, tmp_path):
    model, x, feats, _ = resnet7
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               path)
    sd = load_state_dict(path)
    assert set(sd) == set(model.state_dict())
    bb = load_backbone("resnet18", weights=str(path), device="cpu", layers=False)
    torch.testing.assert_close(bb.embed(x)[0], feats, rtol=1e-4, atol=1e-4)


def test_wrong_class_count_refused(resnet7, tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(resnet7[0].state_dict(), path)
    with pytest.raises(BackboneError, match="does not fit resnet18 with 5 classes"):
        load_backbone("resnet18", weights=str(path), num_classes=5, device="cpu")
    with pytest.raises(BackboneError, match="does not fit mobilenet_v3_small"):
        load_backbone("mobilenet_v3_small", weights=str(path), device="cpu")


def test_pickled_objects_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": NotATensor(), "fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(BackboneError, match="weights_only"):
        load_backbone("resnet18", weights=str(path), device="cpu")


def test_missing_weights_file(tmp_path):
    with pytest.raises(BackboneError, match="weights file not found"):
        load_backbone("resnet18", weights=str(tmp_path / "nope.pt"), device="cpu")


def test_torchscript_by_path(tmp_path):
    path = save_torchscript(tmp_path / "tiny.ts")
    bb = load_backbone(str(path), device="cpu")
    assert bb.name == "tiny.ts"
    assert bb.weights_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert bb.views == [("penultimate", 8 * 4 * 4)]  # no early-layer views from TorchScript
    x = _x()
    feats, logits = bb.embed(x)
    assert logits is None
    with torch.no_grad():
        ref = TinyNet(0).eval()(x)
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-6)


def test_state_dict_given_as_backbone_path_is_explained(resnet7, tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(resnet7[0].state_dict(), path)
    with pytest.raises(BackboneError, match="not a TorchScript file.*--weights"):
        load_backbone(str(path), device="cpu")


def test_unknown_name():
    with pytest.raises(BackboneError, match="unknown backbone 'resnet9000'"):
        load_backbone("resnet9000", device="cpu")


def test_torchvision_without_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(BackboneError, match="not in the torch hub cache") as e:
        load_backbone("resnet18", device="cpu")
    assert str(tmp_path / "torch_home") in str(e.value)
    assert "--weights" in str(e.value)


def test_torchvision_weights_found_in_hub_cache(resnet7, tmp_path, monkeypatch):
    """A file copied into the hub cache is used, with the weights' own preprocessing."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    path = tmp_path / "torch_home" / "hub" / "checkpoints" / os.path.basename(weights.url)
    path.parent.mkdir(parents=True)
    torch.manual_seed(5)
    model = torchvision.models.resnet18().eval()
    torch.save(model.state_dict(), path)
    bb = load_backbone("resnet18", device="cpu", layers=False)
    assert bb.weights_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert bb.preprocess.size == 224 and bb.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    with torch.no_grad():
        torch.testing.assert_close(bb.embed(_x())[1], model(_x()), rtol=1e-4, atol=1e-4)


def test_resize_override_changes_identity(tmp_path):
    path = save_torchscript(tmp_path / "tiny.ts")
    assert load_backbone(str(path), device="cpu").identity["preprocess"]["resize"] == "squash"
    bb = load_backbone(str(path), device="cpu", resize="pad")
    assert bb.preprocess.resize == "pad"
    assert bb.identity["preprocess"]["resize"] == "pad"
    assert bb.identity["preprocess"]["mean"] == list(bb.preprocess.mean)
    with pytest.raises(BackboneError, match="resize must be one of"):
        Preprocess(resize="stretch")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BackboneError, match="unknown device"):
        resolve_device("toaster")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_refused_without_cuda():
    with pytest.raises(BackboneError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(BackboneError, match="no CUDA device"):
        load_backbone("lite0", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_features_match_cpu(lite0):
    gpu = load_backbone("lite0", device="cuda")
    assert gpu.device.type == "cuda" and gpu.identity == lite0.identity
    x = _x(4, size=224) * 0.5
    f_cpu, l_cpu = lite0.embed(x.contiguous(memory_format=torch.channels_last))
    f_gpu, l_gpu = gpu.embed(x.cuda().contiguous(memory_format=torch.channels_last))
    assert f_gpu.device.type == "cuda"
    # TF32/cuDNN differ from oneDNN by rounding only
    np.testing.assert_allclose(f_gpu.cpu().numpy(), f_cpu.numpy(), rtol=2e-2, atol=2e-2)
    assert (l_gpu.argmax(1).cpu() == l_cpu.argmax(1)).all()


def test_cpu_embedding_in_chunks_equals_one_image_at_a_time(lite0):
    """Backbone.embed runs CPU_CHUNK images per forward pass; every view and the logits line up."""
    from shiftbench.embedding.backbones import CPU_CHUNK

    x = _x(2 * CPU_CHUNK + 3, size=64).contiguous(memory_format=torch.channels_last)
    feats, logits = lite0.embed(x)
    one = [lite0.embed(x[i:i + 1]) for i in range(len(x))]
    assert feats.shape == (len(x), lite0.feature_dim) and logits.shape == (len(x), 1000)
    torch.testing.assert_close(feats, torch.cat([f for f, _ in one]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, torch.cat([lg for _, lg in one]), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ BatchNorm folding


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_batchnorm_folding_keeps_the_outputs(resnet7):
    """Every conv+BN pair of resnet18 and lite0 is folded; features and logits stay the same."""
    from shiftbench.embedding.fold import fuse_batchnorm
    from shiftbench.embedding.lite0 import EfficientNetLite0

    torch.manual_seed(0)
    lite = EfficientNetLite0(num_classes=5).eval()
    with torch.no_grad():
        for m in lite.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    for model in (resnet7[0], lite):
        folded = fuse_batchnorm(model, 64)
        assert folded is not model and _count_bn(model) > 0 and _count_bn(folded) == 0
        x = _x(seed=3)
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_batchnorm_folding_refused_when_the_conv_output_is_used_twice():
    """A conv whose output also bypasses its BN cannot be folded: the model comes back as it was."""
    from shiftbench.embedding.fold import fuse_batchnorm

    class Bypass(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return (self.bn(y) + y).mean((2, 3))

    model = Bypass().eval()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.5)
    assert fuse_batchnorm(model, 16) is model and _count_bn(model) == 1


def test_loaded_backbones_are_folded_and_training_sources_are_not(resnet7, tmp_path):
    from shiftbench.training import load_source

    path = tmp_path / "r7.pt"
    torch.save(resnet7[0].state_dict(), path)
    bb = load_backbone("resnet18", weights=str(path), device="cpu")
    assert _count_bn(bb.model) == 0
    feats, logits = bb.embed(resnet7[1].contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(logits, resnet7[3], rtol=1e-4, atol=1e-4)
    src = load_source("resnet18", str(path))
    assert any(k.endswith("running_var") for k in src.state)


# ------------------------------------------------------------------ ONNX Runtime


def test_onnx_runtime_gives_pytorchs_features_and_logits(lite0):
    """On CPU lite0 runs in ONNX Runtime by default; every view and the logits are PyTorch's."""
    eager = load_backbone("lite0", device="cpu", runtime="torch")
    assert lite0.runtime == "onnx" and eager.runtime == "torch" and lite0.identity == eager.identity
    x = (_x(11, seed=4, size=224) * 0.7).contiguous(memory_format=torch.channels_last)
    (f, lg), (f0, lg0) = lite0.embed(x), eager.embed(x)
    assert f.dtype == torch.float32 and f.shape == (11, lite0.feature_dim) and lg.shape == (11, 1000)
    torch.testing.assert_close(f, f0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lg, lg0, rtol=1e-4, atol=1e-4)
    # another side than the exported one goes through PyTorch, not a wrong graph
    f64, _ = lite0.embed(_x(2, size=64))
    torch.testing.assert_close(f64, eager.embed(_x(2, size=64))[0])


@pytest.mark.parametrize("size", [64, 50])
def test_onnx_export_of_same_padding_at_even_and_odd_sides(size):
    """TF-"same" stride-2 layers pad by their input's parity; the graph has it fixed per layer
    (50 px: the stride-2 layers see 50, 25, 13, 7 and 4 px, odd and even sides mixed)."""
    from shiftbench.embedding.runtime import onnx_runner

    bb = load_backbone("lite0", weights="none", device="cpu", runtime="torch")
    run = onnx_runner(bb.model, bb._torch_embed, size)
    assert run is not None
    x = _x(3, seed=5, size=size)
    f, lg = run(x.numpy())
    with torch.no_grad():
        f0, lg0 = bb._torch_embed(x, bb.model)
    np.testing.assert_allclose(f, f0.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lg, lg0.numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_runtime_for_a_torchvision_state_dict(resnet7, tmp_path):
    path = tmp_path / "r7.pt"
    torch.save(resnet7[0].state_dict(), path)
    bb = load_backbone("resnet18", weights=str(path), device="cpu")
    assert bb.runtime == "onnx"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    feats, logits = bb.embed(x)
    with torch.no_grad():
        torch.testing.assert_close(logits, resnet7[0](x), rtol=1e-4, atol=1e-4)


def test_pytorch_where_onnx_cannot_run(tmp_path, monkeypatch, capfd):
    """No onnxruntime, a TorchScript file, a model with an operator ONNX lacks: PyTorch runs, and
    the failed export prints nothing on stdout (where --json goes); runtime='onnx' then refuses."""
    import sys

    from shiftbench.embedding.runtime import onnx_runner

    class Svd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            return self.fc((y + torch.linalg.svdvals(y).sum()).mean((2, 3)))

    assert onnx_runner(Svd().eval(), lambda x, m: (m(x), None), 16) is None
    assert capfd.readouterr().out == ""
    path = save_torchscript(tmp_path / "m.pt")
    assert load_backbone(str(path), device="cpu").runtime == "torch"
    with pytest.raises(BackboneError, match="TorchScript"):
        load_backbone(str(path), device="cpu", runtime="onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert load_backbone("mobilenet_v3_small", weights="none", device="cpu").runtime == "torch"
    with pytest.raises(BackboneError, match="cannot run in ONNX Runtime"):
        load_backbone("mobilenet_v3_small", weights="none", device="cpu", runtime="onnx")
    monkeypatch.setenv("SHIFTBENCH_RUNTIME", "tensorflow")
    with pytest.raises(BackboneError, match="runtime must be one of"):
        load_backbone("mobilenet_v3_small", weights="none", device="cpu")


def test_runtime_from_the_environment(monkeypatch):
    monkeypatch.setenv("SHIFTBENCH_RUNTIME", "torch")
    assert load_backbone("mobilenet_v3_small", weights="none", device="cpu").runtime == "torch"
    assert load_backbone("mobilenet_v3_small", weights="none", device="cpu", runtime="onnx").runtime == "onnx"


def test_hooks_move_with_the_stride2_layers_they_sit_on():
    """A view taken at a stride-2 SameConv2d (replaced by a fixed-kernel conv in the exported copy)
    still reaches the graph's output, and equals PyTorch's."""
    from shiftbench.embedding.lite0 import SameConv2d
    from shiftbench.embedding.runtime import onnx_runner

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.down = SameConv2d(3, 8, 3, 2), SameConv2d(8, 16, 5, 2)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.down(torch.relu(self.stem(x)))).mean((2, 3)))

    torch.manual_seed(0)
    model, captured = Two().eval(), {}
    model.down.register_forward_hook(lambda _m, _a, out: captured.__setitem__("down", out.mean((2, 3))))

    def embed(x, m):
        logits = m(x)
        return torch.cat([captured["down"], logits], 1), logits

    run = onnx_runner(model, embed, 64, [16, 3])
    assert run is not None
    x = _x(3, seed=6)
    f, lg = run(x.numpy())
    with torch.no_grad():
        f0, lg0 = embed(x, model)
    np.testing.assert_allclose(f, f0.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(lg, lg0.numpy(), rtol=1e-4, atol=1e-6)


def test_a_model_to_train_runs_in_pytorch():
    """fuse=False loads a model whose weights will change: the exported graph's copy would go stale."""
    bb = load_backbone("mobilenet_v3_small", weights="none", device="cpu", fuse=False)
    assert bb.runtime == "torch"
    with pytest.raises(BackboneError, match="inference"):
        load_backbone("mobilenet_v3_small", weights="none", device="cpu", fuse=False, runtime="onnx")
