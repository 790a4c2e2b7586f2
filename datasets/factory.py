"""Synthetic factory line generator: ``python datasets/factory.py OUT_DIR [--seed 0] ...``.

The implementation is :mod:`shiftbench.datasets.factory` (inside the package, so that
``shiftbench demo`` can use it when installed); see its docstring.
"""

from shiftbench.datasets.factory import main

if __name__ == "__main__":
    main()
