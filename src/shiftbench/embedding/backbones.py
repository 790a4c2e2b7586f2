"""Backbones: a model, the preprocessing it expects, and an identity for the bank.

Three kinds, chosen by the ``name`` given to :func:`load_backbone`:

* ``"lite0"`` (default): ImageNet EfficientNet-Lite0, weights from a PyPI package;
* any torchvision classification model name (``"resnet50"``...): weights from
  ``weights=FILE``, else the torch hub cache, else a clear offline error;
  ``weights="none"`` gives a randomly initialised model (seed 0);
* a path to a TorchScript file;
* a shiftbench checkpoint (``shiftbench train``'s folder, or its ``model.json``):
  the architecture rebuilt with the checkpoint's classes, its weights and its
  recorded preprocessing; ``Backbone.classes`` names the logits.

A state dict (``.pt``/``.pth``/``.safetensors``) of the user's own fine-tuned
torchvision model is ``name=ARCH, weights=FILE``; its class count is read from the
file (or given as ``num_classes``). Files are loaded with ``weights_only=True`` or
safetensors: nothing is unpickled.

Features come in *views*, concatenated in one vector:

* ``penultimate``: the input of the last ``nn.Linear`` (the globally pooled
  penultimate layer), caught with a forward pre-hook so logits come for free;
* ``stride4``, ``stride8``, ``stride16``: the globally averaged output of the last
  module working at 1/4, 1/8 and 1/16 of the input resolution (found by probing).

ImageNet's last layer is trained to ignore lighting, blur and small rotations,
which are exactly the factory's shifts; early layers keep them. On the steel
benchmark (docs/benchmarks.md) fusing the views lifts the AUROC for lighting from
0.66 to 0.91 and for angle from 0.72 to 0.97 over the penultimate layer alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..images import InputError
from .fold import fuse_batchnorm
from .lite0 import EfficientNetLite0, lite0_weights_path
from .runtime import RUNTIMES, Runner, onnx_runner

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_POLICIES = ("squash", "pad", "crop")
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "shiftbench-checkpoint", 1


class BackboneError(InputError):
    """A backbone that cannot be built or loaded; ``str(e)`` says what to do (an :class:`InputError`)."""


@dataclass(frozen=True)
class Preprocess:
    """How an RGB uint8 image becomes the model's input tensor.

    ``resize``: ``squash`` (whole image to size x size, aspect not kept),
    ``pad`` (longest side to ``size``, centred on the mean colour) or ``crop``
    (shortest side to ``size``, centre crop). Normalisation: ``(rgb/255 - mean) / std``.
    """

    size: int = 224
    resize: str = "squash"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.resize not in RESIZE_POLICIES:
            raise BackboneError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


CPU_CHUNK = 8  # images per forward pass on CPU (see Backbone.embed)


@dataclass
class Backbone:
    """A loaded feature extractor. Call :meth:`embed` on normalised input."""

    name: str
    model: nn.Module
    preprocess: Preprocess
    weights_id: str
    device: torch.device
    views: list[tuple[str, int]] = field(default_factory=list)
    _captured: dict = field(default_factory=dict, repr=False)
    classes: list[str] | None = None  # names of the logits, for a shiftbench checkpoint
    runner: Runner | None = field(default=None, repr=False)  # ONNX Runtime's forward pass (runtime.py)

    @property
    def runtime(self) -> str:
        """``onnx`` where ONNX Runtime runs the forward pass, else ``torch``."""
        return "torch" if self.runner is None else "onnx"

    @property
    def runs_on(self) -> dict:
        """Where the forward pass runs, as recorded in ``bank.json`` and ``summary.json``."""
        return {"device": str(self.device), "forward": self.runtime}

    @property
    def feature_dim(self) -> int:
        return sum(d for _, d in self.views)

    @property
    def identity(self) -> dict:
        """What must match between a bank and the images queried against it."""
        return {"backbone": self.name, "weights": self.weights_id, "views": [list(v) for v in self.views],
                "preprocess": self.preprocess.to_dict()}

    @torch.inference_mode()
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 3, S, S) normalised input -> ((N, D) features, (N, C) logits or None).

        ``D`` is the sum of the view sizes; the views lie side by side in the
        order of ``self.views``. On CPU the forward pass goes ``CPU_CHUNK`` images at
        a time: a small batch's feature maps stay in cache (lite0 at 224 px: 3.3 ms
        per image in batches of 8, 7.5 ms in batches of 32, on 2 cores).
        """
        if self.device.type != "cpu" or len(x) <= CPU_CHUNK:
            return self._embed(x)
        parts = [self._embed(c) for c in x.split(CPU_CHUNK)]
        logits = None if parts[0][1] is None else torch.cat([lg for _, lg in parts])
        return torch.cat([f for f, _ in parts]), logits

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        side = self.preprocess.size
        if self.runner is not None and x.device.type == "cpu" and tuple(x.shape[1:]) == (3, side, side):
            f, logits = self.runner(x.numpy())
            return torch.from_numpy(f), None if logits is None else torch.from_numpy(logits)
        return self._torch_embed(x, self.model)

    def _torch_embed(self, x: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`embed` by ``model``: ``self.model`` or a copy with the same hooks (for the export)."""
        self._captured.clear()
        out = model(x)
        logits = None
        if "penultimate" in self._captured:  # pre-hook on the classifier saw the pooled features
            logits = out.float()
        else:
            self._captured["penultimate"] = out
        parts = [self._captured[name].flatten(1).float() for name, _ in self.views] if self.views \
            else [self._captured["penultimate"].flatten(1).float()]
        return torch.cat(parts, 1), logits


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise BackboneError(f"unknown device {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError("--device cuda asked for, but no CUDA device is available")
    return dev


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a torch file, never unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # includes the UnpicklingError for non-tensor pickles
            raise BackboneError(f"{path} is not a plain state dict loadable with "
                                f"weights_only=True ({type(e).__name__}); save tensors only, "
                                f"or use .safetensors") from e
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise BackboneError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


def _hub_weights(arch: str):
    """(path in the torch hub cache, preprocessing) of torchvision's default weights."""
    import torchvision
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except Exception as e:
        raise BackboneError(f"torchvision has no pretrained weights for {arch!r}; "
                            f"pass weights=FILE or weights='none'") from e
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    t = weights.transforms()
    pre = Preprocess(size=int(t.crop_size[0]), mean=tuple(t.mean), std=tuple(t.std))
    return path, pre


def _torchvision(arch: str, weights: str | None, num_classes: int | None) -> tuple[nn.Module, str, Preprocess]:
    import torchvision
    if arch not in torchvision.models.list_models(module=torchvision.models):
        if os.sep in arch or "/" in arch or Path(arch).suffix:  # meant as a file or folder
            raise BackboneError(f"no such file or folder: {arch} (a checkpoint folder of `shiftbench train`, "
                                f"or a TorchScript file)")
        raise BackboneError(f"unknown backbone {arch!r}: use 'lite0', a torchvision classification "
                            f"model name (e.g. resnet50), a checkpoint folder or a TorchScript file")
    pre = Preprocess()
    if weights is None:
        path, pre = _hub_weights(arch)
        if not path.is_file():
            raise BackboneError(f"pretrained weights for {arch} are not in the torch hub cache "
                                f"({path}) and there is no network: copy the file there, "
                                f"or pass weights=FILE (--weights)")
        weights = str(path)
    if weights == "none":
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
            torch.manual_seed(0)
            model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes or 1000)
        return model.eval(), "random-init-seed0", pre
    sd = load_state_dict(weights)
    if num_classes is None:  # read the class count from the classifier in the file
        name, _ = _last_linear(torchvision.models.get_model(arch, weights=None))
        key = f"{name}.weight"
        num_classes = sd[key].shape[0] if key in sd else 1000
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise BackboneError(f"{weights} does not fit {arch} with {num_classes} classes: "
                            f"{str(e).splitlines()[0]}") from e
    return model.eval(), file_digest(weights), pre


def build_arch(arch: str, num_classes: int) -> nn.Module:
    """An untrained classifier: ``lite0`` or a torchvision name, ``num_classes`` outputs."""
    if arch == "lite0":
        return EfficientNetLite0(num_classes=num_classes)
    import torchvision
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise BackboneError(f"unknown architecture {arch!r}")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def checkpoint_meta(name: str | os.PathLike) -> tuple[Path, dict] | None:
    """(folder, parsed ``model.json``) when ``name`` is a shiftbench checkpoint, else None."""
    p = Path(name)
    if p.is_dir():
        if not (p / "model.json").is_file():
            raise BackboneError(f"{p} is a folder but not a shiftbench checkpoint (no model.json)")
        p = p / "model.json"
    elif p.suffix != ".json" or not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BackboneError(f"cannot read checkpoint {p}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise BackboneError(f"{p} is not a shiftbench checkpoint (format is not {CHECKPOINT_FORMAT!r})")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise BackboneError(f"{p}: checkpoint version {meta.get('version')} is not supported "
                            f"(this shiftbench reads version {CHECKPOINT_VERSION})")
    return p.parent, meta


def checkpoint_header(folder: Path, meta: dict) -> tuple[str, Preprocess]:
    """Weights id (digest of the safetensors, checked against ``model.json``) and preprocessing
    of a checkpoint, without building its model."""
    path = folder / "model.safetensors"
    digest = file_digest(path) if path.is_file() else None
    if digest is None or digest != meta.get("weights_sha256", digest):
        # model.json is written last: a mismatch means a half-rewritten or mixed-up folder
        raise BackboneError(f"{path} is missing or does not match {folder / 'model.json'}")
    p = meta["preprocess"]
    return f"checkpoint-{digest}", Preprocess(int(p["size"]), p["resize"], tuple(p["mean"]), tuple(p["std"]))


def _checkpoint(folder: Path, meta: dict) -> tuple[nn.Module, str, Preprocess]:
    """Model, weights id and preprocessing of a checkpoint."""
    weights_id, pre = checkpoint_header(folder, meta)
    path = folder / "model.safetensors"
    model = build_arch(meta["arch"], len(meta["classes"]))
    try:
        model.load_state_dict(load_state_dict(path))
    except RuntimeError as e:
        raise BackboneError(f"{path} does not fit {meta['arch']} with {len(meta['classes'])} classes: "
                            f"{str(e).splitlines()[0]}") from e
    return model.eval(), weights_id, pre


def load_backbone(name: str = "lite0", weights: str | None = None, num_classes: int | None = None,
                  device: str = "auto", resize: str | None = None, layers: bool = True,
                  fuse: bool = True, runtime: str | None = None) -> Backbone:
    """Build a backbone ready for :meth:`Backbone.embed`.

    Parameters
    ----------
    name : str
        ``"lite0"``, a torchvision model name, a TorchScript file path, or a
        shiftbench checkpoint (folder or its ``model.json``).
    weights : str, optional
        State dict file (``.pt``/``.pth``/``.safetensors``); ``"none"`` for random
        initialisation; default: the backbone's pretrained ImageNet weights.
    num_classes : int, optional
        Classifier size of a user state dict; read from the file when omitted.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    resize : str, optional
        Override the resize policy (``squash``, ``pad``, ``crop``).
    layers : bool
        Add the early-layer views (``stride4/8/16``) to the penultimate one.
    fuse : bool
        Fold each BatchNorm into the convolution before it (:func:`fuse_batchnorm`):
        the same features, ~27% less time for lite0 on CPU. Off for a model that will be trained.
    runtime : str, optional
        ``auto`` (default; the ``SHIFTBENCH_RUNTIME`` environment variable where set): on the CPU
        with ``fuse`` (inference: the graph holds a copy of the weights), ONNX Runtime for the forward
        pass where the model exports and gives the same features (:mod:`.runtime`; lite0's forward
        pass ~1.5x faster), else PyTorch; ``torch``: always PyTorch; ``onnx``: ONNX Runtime or an
        error. ``Backbone.runtime`` says which runs.
    """
    runtime = runtime or os.environ.get("SHIFTBENCH_RUNTIME") or "auto"
    if runtime not in RUNTIMES:
        raise BackboneError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    dev = resolve_device(device)
    ckpt = checkpoint_meta(name) if name != "lite0" else None
    if ckpt is not None:
        if weights is not None:
            raise BackboneError(f"{name} is a checkpoint with its own weights; drop --weights")
        model, weights_id, pre = _checkpoint(*ckpt)
    elif name == "lite0":
        model = EfficientNetLite0(num_classes=num_classes or 1000)
        if weights == "none":
            with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
                torch.manual_seed(0)
                model = EfficientNetLite0(num_classes=num_classes or 1000)
            weights_id = "random-init-seed0"
        else:
            path = weights or lite0_weights_path()
            model.load_state_dict(load_state_dict(path))
            weights_id = file_digest(path)
        pre = Preprocess(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    elif os.path.isfile(name):
        try:
            model = torch.jit.load(name, map_location="cpu")
        except Exception as e:
            raise BackboneError(f"{name} is not a TorchScript file; for a state dict use "
                                f"--backbone ARCH --weights {name}") from e
        weights_id, pre = file_digest(name), Preprocess()
    else:
        model, weights_id, pre = _torchvision(name, weights, num_classes)
    if resize:
        pre = Preprocess(pre.size, resize, pre.mean, pre.std)
    model = model.eval().to(dev)
    if not isinstance(model, torch.jit.ScriptModule):
        if fuse:
            model = fuse_batchnorm(model, pre.size)
        model = model.to(memory_format=torch.channels_last)
    display = f"checkpoint:{ckpt[1]['arch']}" if ckpt else \
        Path(name).name if os.path.isfile(name) else name  # no folder: identity is path-independent
    bb = Backbone(name=display, model=model, preprocess=pre, weights_id=weights_id, device=dev,
                  classes=list(ckpt[1]["classes"]) if ckpt else None)
    scripted = isinstance(model, torch.jit.ScriptModule)
    found = None if scripted else _last_linear(model)
    if found is not None:
        found[1].register_forward_pre_hook(lambda _m, args: bb._captured.__setitem__("penultimate", args[0]))
    taps = {} if scripted or not layers else _find_taps(model, pre.size, dev)
    for view, module in taps.items():
        module.register_forward_hook(
            lambda _m, _a, out, view=view: bb._captured.__setitem__(view, out.float().mean((2, 3))))
    with torch.inference_mode():  # one dummy pass to learn the view sizes
        bb.embed(torch.zeros(1, 3, pre.size, pre.size, device=dev))
        bb.views = [(v, int(bb._captured[v].flatten(1).shape[1])) for v in ["penultimate", *taps]]
    if runtime == "onnx" or (runtime == "auto" and fuse and dev.type == "cpu" and not scripted):
        if dev.type != "cpu" or scripted or not fuse:  # (not fuse: a model to train, whose weights will change)
            raise BackboneError("runtime 'onnx' runs on the CPU, for inference (fuse=True), and needs a model "
                                "that is not TorchScript")
        bb.runner = onnx_runner(bb.model, bb._torch_embed, pre.size, [d for _, d in bb.views])
        if bb.runner is None and runtime == "onnx":
            raise BackboneError(f"{display} cannot run in ONNX Runtime here (onnxruntime and onnx installed? "
                                f"an operator ONNX lacks?); use runtime 'torch'")
    return bb


def _find_taps(model: nn.Module, size: int, device: torch.device) -> dict[str, nn.Module]:
    """The last module (at most two levels deep) whose output is at 1/4, 1/8, 1/16 scale."""
    order: list[tuple[nn.Module, tuple]] = []
    handles = [m.register_forward_hook(lambda m, _a, out: order.append((m, tuple(out.shape)))
                                       if isinstance(out, torch.Tensor) else None)
               for name, m in model.named_modules() if name and name.count(".") <= 1]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
    taps = {}
    for stride in (4, 8, 16):
        side = -(-size // stride)
        hits = [m for m, shape in order if len(shape) == 4 and shape[-1] == side and shape[-2] == side]
        if hits:
            taps[f"stride{stride}"] = hits[-1]
    return taps
