"""shiftbench: find, explain and fix the production images a vision model was not trained for.

    import shiftbench
    shiftbench.index("train_images/")
    result = shiftbench.scan("prod_images/")
    result.table[result.table.is_ood]
    shiftbench.train("labelled_images/")  # a classifier checkpoint (shiftbench.training)
    shiftbench.predict("model/", "prod_images/")  # its prediction per image, as a table
    shiftbench.collect(result.out_dir, budget=50)  # what to collect and label (shiftbench.collection)
    shiftbench.report(result.out_dir)  # one HTML page: clusters beside their nearest training images

The heavy modules (torch, faiss) load on first use, so ``import shiftbench``
and ``shiftbench --help`` stay fast. Bad input of any kind raises :class:`shiftbench.InputError`
(a ``ValueError``) with a message that says what to change.
"""

__version__ = "0.1.0"
__all__ = ["index", "scan", "report", "train", "predict", "collect", "build_augmentation", "load_augmentation",
           "finetune", "ScanResult", "TrainResult", "FinetuneResult", "CollectResult", "InputError", "__version__"]


def __getattr__(name):
    if name in ("index", "scan", "ScanResult"):
        from . import api
        return getattr(api, name)
    if name in ("train", "TrainResult", "predict", "finetune", "FinetuneResult"):
        from . import training
        return getattr(training, name)
    if name in ("collect", "build_augmentation", "load_augmentation", "CollectResult"):
        from . import collection
        return getattr(collection, name)
    if name == "report":
        from .reports import write_report
        return write_report
    if name == "InputError":  # bad input of any kind (a backbone's too: BackboneError is one)
        from .images import InputError
        return InputError
    raise AttributeError(f"module 'shiftbench' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
