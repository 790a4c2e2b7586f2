"""Build a classifier from a pretrained backbone and decide which of its layers train.

``trainable``:

* ``head``: the last ``nn.Linear`` only (a linear probe on frozen features);
* ``last``: the last block working at the lowest resolution, and everything the
  forward pass runs after it (conv head, pooling, classifier). For lite0 that is
  ``_blocks.15``, ``_conv_head``, ``_bn1``, ``_fc``; for a resnet ``layer4.1`` and ``fc``;
* ``all``: every parameter.

Frozen layers stay in eval mode. With ``head`` and ``last`` the batch-norm layers
keep their ImageNet statistics too (their scale and shift still train): the
statistics of a few hundred images in batches of 32 are noisy, and lite0's
BN momentum (0.01) would leave the running averages far behind the weights
after a few epochs, so the validation score would not measure the trained model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..embedding.backbones import BackboneError, Preprocess, build_arch, checkpoint_meta, load_backbone
from ..images import InputError

TRAINABLE = ("head", "last", "all")


def own_rng(fn):
    """Decorator: ``fn`` seeds torch for itself (new heads, each epoch's dropout); the caller's torch
    random state is put back afterwards (the CPU's, and CUDA's where the caller had started it)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda):
            return fn(*args, **kwargs)
    return wrapper


def check_lr(lr: float | None) -> None:
    """A learning rate is a positive finite number (None: the default of the trainable mode)."""
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise InputError(f"learning rate must be a positive number, got {lr}")


@dataclass
class Source:
    """Pretrained weights to start from: ``shiftbench.embedding.load_backbone`` plus lineage."""

    arch: str
    state: dict[str, torch.Tensor]
    preprocess: Preprocess
    classes: list[str] | None  # the parent checkpoint's classes, else None
    parent: dict | None  # {"path", "digest"} of the parent checkpoint, else None


def load_source(backbone: str = "lite0", weights: str | None = None, *, size: int | None = None,
                resize: str | None = None) -> Source:
    """Weights and preprocessing of ``backbone`` (lite0, torchvision name or checkpoint).

    ``size``/``resize`` override the backbone's input size and resize policy;
    the normalisation is the backbone's.
    """
    backbone = str(backbone)
    ckpt = checkpoint_meta(backbone) if backbone != "lite0" else None
    bb = load_backbone(backbone, weights, device="cpu", resize=resize, layers=False, fuse=False,
                       runtime="torch")  # (only its weights are read)
    if isinstance(bb.model, torch.jit.ScriptModule):
        raise BackboneError(f"cannot train TorchScript model {backbone}: give an architecture name "
                            f"(lite0, resnet50...) with --weights, or a shiftbench checkpoint")
    pre = bb.preprocess
    if size is not None:
        if size < 32:
            raise BackboneError(f"--size must be at least 32, got {size}")
        pre = Preprocess(size, pre.resize, pre.mean, pre.std)
    parent = {"path": str(ckpt[0].resolve()), "digest": bb.weights_id} if ckpt else None
    return Source(ckpt[1]["arch"] if ckpt else backbone, bb.model.state_dict(), pre, bb.classes, parent)


def build_classifier(source: Source, classes: list[str], seed: int = 0) -> nn.Module:
    """``source.arch`` with ``len(classes)`` outputs, initialised from ``source.state``.

    The classifier layer is new (seeded) unless the source is a checkpoint with
    the same classes in the same order, whose head is kept.
    """
    torch.manual_seed(seed)  # the new head's initial weights
    model = build_arch(source.arch, len(classes))
    target = model.state_dict()
    head = _last_linear_name(model)
    keep_head = source.classes is not None and list(source.classes) == list(classes)
    state = {k: v for k, v in source.state.items()
             if k in target and target[k].shape == v.shape
             and (keep_head or k not in (f"{head}.weight", f"{head}.bias"))}
    missing = set(target) - set(state)
    model.load_state_dict(state, strict=False)
    unexpected = [k for k in missing if not k.startswith(f"{head}.") and "aux" not in k.lower()]
    if unexpected:  # the body must come whole from the source: anything else is a bug
        raise BackboneError(f"{source.arch}: pretrained weights lack {sorted(unexpected)[:3]}")
    return model


def _last_linear_name(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise BackboneError(f"{type(model).__name__} has no nn.Linear classifier to train")
    return names[-1]


def plan_trainable(model: nn.Module, mode: str, size: int) -> tuple[str | None, set[str]]:
    """(cut, trainable module names): the cut is the first trainable module run.

    Found by running a dummy image and recording the order in which modules are
    called, so it follows each architecture's real forward pass. ``cut`` is None
    for ``all``.
    """
    if mode not in TRAINABLE:
        raise BackboneError(f"trainable must be one of {TRAINABLE}, got {mode!r}")
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items() if n}
    order: dict[str, int] = {}
    ndim: dict[str, int] = {}

    def pre(m, _args):
        order.setdefault(names[m], len(order))

    def post(m, _args, out):
        if isinstance(out, torch.Tensor):
            ndim.setdefault(names[m], out.ndim)
    handles = [h for m in names for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    was_training = model.training
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if mode == "all":
        return None, set(order)
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear) and n in order]
    if not linears:
        raise BackboneError(f"{type(model).__name__} has no nn.Linear classifier to train")
    cut = max(linears, key=order.get)
    if mode == "last":
        # depth-1 modules (blocks inside a stage list) with weights and 4-D output
        blocks = [n for n in order if n.count(".") == 1 and ndim.get(n) == 4
                  and any(True for _ in modules[n].parameters())]
        cut = max(blocks, key=order.get) if blocks else cut
    return cut, {n for n, i in order.items() if i >= order[cut]}


def set_trainable(model: nn.Module, mode: str, trainable: set[str]) -> None:
    """``requires_grad`` on the parameters of ``trainable`` modules only."""
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            p.requires_grad_(mode == "all" or name in trainable)


def set_modes(model: nn.Module, mode: str, trainable: set[str]) -> None:
    """Train mode where it belongs: everything for ``all``; else only the trainable
    modules' leaves other than batch norm (dropout, for one)."""
    model.train(mode == "all")
    if mode == "all":
        return
    for name, m in model.named_modules():
        if name in trainable and not any(True for _ in m.children()) \
                and not isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.training = True

