"""ONNX Runtime for the forward pass on CPU: the same features as PyTorch, ~1.5x faster for lite0.

On these CPUs PyTorch eager spends much of lite0's time between its small depthwise
kernels; ONNX Runtime fuses them (docs/benchmarks.md, "ONNX Runtime on CPU"). The model,
with its view hooks, is traced once into an in-memory ONNX graph when the backbone is
loaded (0.2-0.4 s for lite0 on an idle machine, no file), and the graph is used only if it
gives the same features, view by view, and logits as the PyTorch model on a probe input.
The graph holds a copy of the weights: for inference only. Anything that cannot be exported
(a TorchScript file, an operator ONNX lacks) keeps PyTorch: the result is the same,
only slower.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .lite0 import SameConv2d

RUNTIMES = ("auto", "onnx", "torch")  # for load_backbone(runtime=...)
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def _static_convs(model: nn.Module, size: int) -> nn.Module:
    """A copy of ``model`` whose TF-"same" stride-2 convolutions have a fixed kernel.

    :class:`SameConv2d` pads its kernel by the parity of its input at run time (a zero row
    and column in front for an even side), which the ONNX exporter cannot give a shape. At a
    fixed input side each layer's parity is fixed: one pass finds it, and the layers that
    see an even side get a plain convolution with the padded kernel; hooks move with them.
    """
    sides: dict[str, int] = {}

    def record(name: str):
        def hook(_m, args):
            sides[name] = args[0].shape[-1]  # returns None: the input goes on unchanged
        return hook

    handles = [m.register_forward_pre_hook(record(name))
               for name, m in model.named_modules() if isinstance(m, SameConv2d) and m.stride[0] == 2]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    for name, side in sides.items():
        if side % 2:
            continue  # odd side: SameConv2d pads symmetrically, a plain convolution already
        m = model.get_submodule(name)
        k = m.kernel_size[0]
        conv = nn.Conv2d(m.in_channels, m.out_channels, k + 1, 2, k // 2, groups=m.groups, bias=m.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(F.pad(m.weight, [1, 0, 1, 0]))
            if m.bias is not None:
                conv.bias.copy_(m.bias)
        conv._forward_hooks, conv._forward_pre_hooks = m._forward_hooks, m._forward_pre_hooks
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, conv)
    return model


def onnx_runner(model: nn.Module, embed: Callable[[torch.Tensor, nn.Module], tuple], size: int,
                views: list[int] | None = None) -> Runner | None:
    """An ONNX Runtime session computing what ``embed`` computes with ``model``, or None.

    Parameters
    ----------
    model
        The (BatchNorm-folded, eval-mode) CPU model whose hooks ``embed`` reads.
    embed
        ``embed(x, model)``: ``(N, 3, size, size)`` tensor -> ``((N, D) features, (N, C) logits or None)``
        by ``model`` or a copy of it (the hooks travel with the copy).
    size
        The input side; the session takes any batch size at this side only.
    views
        Sizes of the views side by side in the features (default: one); each is compared on its own scale.

    Returns
    -------
    callable or None
        ``(N, 3, size, size) float32 array -> ((N, D) features, (N, C) logits or None)``;
        None when onnxruntime or onnx is missing, the export fails, or the session's
        output differs from ``embed``'s on a probe input (by more than 1e-4 of each view's largest value).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        static = _static_convs(model, size)
        with torch.no_grad():
            want = embed(probe, model)
            has_logits = want[1] is not None

            class Views(nn.Module):  # the traced graph: the hooks' views side by side, then the logits
                def __init__(self):
                    super().__init__()
                    self.model = static

                def forward(self, x):
                    out = embed(x, self.model)
                    return out if has_logits else out[0]

            buf = io.BytesIO()
            names = ["features", "logits"] if has_logits else ["features"]
            with warnings.catch_warnings(), _stdout_silenced():  # the tracer's notes; a failed export's graph
                warnings.simplefilter("ignore")
                torch.onnx.export(Views().eval(), (probe,), buf, dynamo=False, input_names=["x"], output_names=names,
                                  dynamic_axes={n: {0: "n"} for n in ["x", *names]}, opset_version=17)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        # no spinning between calls: the DataLoader's workers and attribution share the cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any exporter or runtime failure means: keep PyTorch
        return None

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})
        return out[0], (out[1] if has_logits else None)

    try:
        got, logits = run(probe.numpy())
    except Exception:  # noqa: BLE001 - a graph the runtime cannot run: keep PyTorch
        return None
    sizes = views or [got.shape[1]]
    if got.shape != tuple(want[0].shape) or sum(sizes) != got.shape[1]:
        return None
    cuts = np.cumsum(sizes)[:-1]
    parts = list(zip(np.split(got, cuts, axis=1), np.split(want[0].float().numpy(), cuts, axis=1)))
    if has_logits:
        parts.append((logits, want[1].float().numpy()))
    return run if all(np.allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max()) for g, w in parts) else None


@contextlib.contextmanager
def _stdout_silenced():
    """File descriptor 1 to /dev/null: a failed export prints its whole graph there from C++,
    whatever the logging settings (torch 2.14), which would break ``--json`` output. Process-wide
    for the export's fraction of a second: other threads' stdout is lost meanwhile (nothing in
    shiftbench prints while a backbone loads)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
