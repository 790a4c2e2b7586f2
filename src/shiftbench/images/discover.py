"""Find image files under a folder and read class labels for them.

Paths inside shiftbench are always relative to the scanned root and use ``/``
separators, so tables written on one machine read the same on another.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class InputError(ValueError):
    """Bad user input (missing folder, malformed CSV...). The CLI maps it to exit 2."""


def find_images(root: str | os.PathLike) -> list[str]:
    """Return the image files below ``root``, recursively, sorted.

    Matching is by suffix, case-insensitive (``.JPG`` counts). Hidden files and
    folders (name starting with ``.``) are skipped, so a workspace kept inside the
    image folder is not scanned as data. Symbolic links are followed, to files and
    to folders (a class folder linked in from elsewhere is common); a folder already
    visited through another link is not entered again, so link cycles end. A folder that
    cannot be listed (permissions) is an :class:`InputError`, not a silent gap.

    Returns
    -------
    list of str
        Paths relative to ``root`` with ``/`` separators, sorted.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"not a folder: {root}")
    found, seen = [], set()

    def unreadable(e: OSError) -> None:  # a folder left out silently would drop a class, or a station
        raise InputError(f"cannot list the folder {e.filename}: {e.strerror}")
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        real = os.path.realpath(dirpath)
        if real in seen:  # reached again through a link: already listed (or a cycle)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # the first link to a folder wins
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            found.append(rel.replace(os.sep, "/"))
    found.sort()
    return found


def labels_from_folders(paths: list[str]) -> list[str] | None:
    """Class label per image from its first sub-folder, or None.

    Labels are given only when every image sits in a sub-folder of the root (the
    ``root/<class>/<image>`` layout of ImageFolder); otherwise None.
    """
    if not paths or any("/" not in p for p in paths):
        return None
    return [p.split("/", 1)[0] for p in paths]


def labels_from_csv(csv_path: str | os.PathLike, paths: list[str]) -> list[str]:
    """Class label per image from a CSV with columns ``path`` and ``label``.

    ``path`` is relative to the image root (``\\`` or ``/`` separators). Images
    absent from the CSV get the label ``""``; a CSV none of whose paths names an image
    (absolute paths, another folder) is an error.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = {"path", "label"} - set(reader.fieldnames or [])
            if missing:
                raise InputError(f"{csv_path}: needs columns path,label; missing {sorted(missing)}")
            table = {}
            for row in reader:
                if row["path"] is None or row["label"] is None:  # a short row: DictReader fills None
                    raise InputError(f"{csv_path}, line {reader.line_num}: needs a path and a label")
                table[row["path"].strip().replace("\\", "/")] = row["label"].strip()
    except OSError as e:
        raise InputError(f"cannot read labels CSV {csv_path}: {e.strerror}") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"labels CSV {csv_path} is not a UTF-8 CSV file: {e}") from None
    if table and paths and not table.keys() & set(paths):
        raise InputError(f"{csv_path}: none of its {len(table)} paths names one of the {len(paths)} images found "
                         f"(paths are relative to the image folder, e.g. {paths[0]}; the CSV has "
                         f"{next(iter(table))})")
    return [table.get(p, "") for p in paths]
