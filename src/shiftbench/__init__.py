"""shiftbench: find, explain and fix the production images a vision model was not trained for.

    import shiftbench
    shiftbench.index("train_images/")
    result = shiftbench.scan("prod_images/")
    result.table[result.table.is_ood]

The heavy modules (torch, faiss) load on first use, so ``import shiftbench``
and ``shiftbench --help`` stay fast.
"""

__version__ = "0.1.0"
__all__ = ["index", "scan", "__version__"]


def __getattr__(name):
    if name in ("index", "scan", "ScanResult"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'shiftbench' has no attribute {name!r}")
