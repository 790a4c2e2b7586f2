"""Collection: what to shoot on the line, which images to label first, and a shift-matched augmentation.

    import shiftbench
    res = shiftbench.collect("ws/scans/20250101-120000", budget=50)
    res.plan[0]["action"]            # "Add 20 images under the new lighting: ..."
    res.selection.head()             # the images to label first
    aug = shiftbench.load_augmentation(res.out_dir / "augment.yaml")

albumentations loads only when an augmentation is built or loaded.
"""

from .api import CollectResult, collect, resolve_budget
from .augment import augmentation_spec
from .transforms import build_augmentation, load_augmentation
from .scan_io import load_scan, training_reference
from .select import allocate, cluster_weights, k_center_greedy

__all__ = ["CollectResult", "collect", "resolve_budget", "augmentation_spec", "build_augmentation",
           "load_augmentation", "load_scan", "training_reference", "allocate", "cluster_weights",
           "k_center_greedy"]

