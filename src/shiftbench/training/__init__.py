"""Training: a classifier from a pretrained backbone, on a labelled folder, into a checkpoint.

``train`` is the whole job; ``fit`` is the reusable loop (fine-tuning calls it with
extra data and a shift-matched augmentation); ``predict`` classifies with a checkpoint.
(The package is ``training``, not ``train``: a subpackage ``shiftbench.train`` would
shadow the function ``shiftbench.train`` as soon as it was imported.)
"""

from .api import TrainResult, classify, predict, train
from .checkpoint import read_checkpoint, save_checkpoint
from .data import LabeledImages, load_labeled, stratified_split
from .finetune import FinetuneResult, finetune
from .fit import DEFAULT_LR, FitResult, fit
from .model import TRAINABLE, Source, build_classifier, load_source, plan_trainable

__all__ = ["TrainResult", "classify", "predict", "train", "read_checkpoint", "save_checkpoint", "LabeledImages",
           "load_labeled", "stratified_split", "DEFAULT_LR", "FitResult", "fit", "TRAINABLE", "Source",
           "build_classifier", "load_source", "plan_trainable", "FinetuneResult", "finetune"]
