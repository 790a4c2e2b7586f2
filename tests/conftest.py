"""Shared fixtures and helpers: a tiny synthetic dataset, a lite0 backbone, odd image bytes."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.pop("SHIFTBENCH_RUNTIME", None)  # the tests check the default choice of runtime

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "datasets"))

import synthetic  # noqa: E402

N_TRAIN, N_PROD, SIZE = 24, 12, 96


def pytest_configure(config):
    # TorchScript is deprecated in recent torch but is a supported backbone format here
    config.addinivalue_line("filterwarnings", r"ignore:`torch\.jit\..*` is deprecated:FutureWarning")


# ---------------------------------------------------------------- image bytes

def png_bytes(arr: np.ndarray) -> bytes:
    """PNG of an OpenCV-ordered array (BGR/BGRA/grey, uint8 or uint16)."""
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def jpeg_bytes(arr: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def pil_bytes(im, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth-ish random (h, w, 3) uint8 image (compresses to a few kB)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (5, 5), 0)


def unreadable_corpus() -> dict[str, bytes]:
    """Files that must come out as ``unreadable`` (name -> bytes)."""
    colour = noise(64, 96)
    jpg, png = jpeg_bytes(colour), png_bytes(colour)
    return {
        "empty.jpg": b"",
        "truncated.jpg": jpg[: len(jpg) // 2],
        "truncated.png": png[: len(png) // 2],
        "text.jpg": b"this is a text file, not a JPEG\n" * 4,
    }


def odd_valid_corpus() -> dict[str, bytes]:
    """Unusual files that must decode fine (name -> bytes)."""
    from PIL import Image

    grey16 = np.full((40, 50), 40000, np.uint16)
    grey16[:, :25] = 1000
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGRA order
    rgba[..., 3] = np.linspace(0, 255, 50, dtype=np.uint8)[None, :]
    pal = Image.fromarray(noise(40, 50)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return {
        "png_named.jpg": png_bytes(noise(40, 50, seed=1)),
        "grey16.png": png_bytes(grey16),
        "grey.png": png_bytes(noise(40, 50, seed=2)[..., 0].copy()),
        "rgba.png": png_bytes(rgba),
        "palette.png": pil_bytes(pal, "PNG"),
    }


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


# ---------------------------------------------------------------- tiny models

class TinyNet(nn.Module):
    """A cheap deterministic feature extractor (no Linear layer: output = features)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.1)
            self.conv.bias.zero_()
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, x):
        return torch.flatten(self.pool(torch.relu(self.conv(x))), 1)


def save_torchscript(path: Path, seed: int = 0) -> Path:
    model = TinyNet(seed).eval()
    traced = torch.jit.trace(model, torch.zeros(1, 3, 224, 224))
    traced.save(str(path))
    return path


# ---------------------------------------------------------------- fresh processes

def run_isolated(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh Python (tests dir importable), in its own process group.

    Used where the test process's own state matters: DataLoader workers are forked, and a
    parent that already used OpenCV's thread pool must not be the one forking them.
    Whatever the script leaves behind (stuck workers) is killed with its group.
    """
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, -9, out, err + "\n[killed: timeout]")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftover workers of this group only
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    """``make_dataset`` output: train/<class>/*.png (24), prod/{clean,dark,rotated}_*.png (12)."""
    return synthetic.make_dataset(tmp_path_factory.mktemp("synth"), n_train=N_TRAIN, n_prod=N_PROD,
                                  size=SIZE)


@pytest.fixture(scope="session")
def lite0():
    from shiftbench.embedding import load_backbone
    return load_backbone("lite0", device="cpu")


@pytest.fixture(scope="session")
def bank_workspace(tmp_path_factory, synth) -> Path:
    """A workspace whose bank indexes ``synth/train`` with lite0 (built once; copy before writing)."""
    import shiftbench
    ws = tmp_path_factory.mktemp("bank_ws") / "ws"
    shiftbench.index(synth / "train", workspace=ws, device="cpu", num_workers=0)
    return ws


@pytest.fixture(scope="session")
def tiny_ts(tmp_path_factory) -> Path:
    """A cheap TorchScript backbone for the tests about mechanics, not accuracy."""
    return save_torchscript(tmp_path_factory.mktemp("ts") / "tiny.ts")


@pytest.fixture
def workspace(bank_workspace, tmp_path) -> Path:
    """A private copy of the lite0 bank workspace."""
    ws = tmp_path / "ws"
    shutil.copytree(bank_workspace, ws)
    return ws


@pytest.fixture
def spy_embed(monkeypatch):
    """Record the paths each ``embed_files`` call (as used by ``embed_folder``) really embeds."""
    from shiftbench.embedding import store

    calls: list[list[str]] = []
    real = store.embed_files

    def spy(root, paths, *args, **kw):
        calls.append(list(paths))
        return real(root, paths, *args, **kw)

    monkeypatch.setattr(store, "embed_files", spy)
    return calls
