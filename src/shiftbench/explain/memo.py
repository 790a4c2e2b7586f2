"""Attribution rows kept on disk, so that an interrupted or repeated scan does not redo them.

Attribution is the slow part of a scan (a few tenths of a second per flagged image on a
CPU). An image's row depends only on the image's bytes (``sha``), on the bank it was
compared with and on the code that attributed it: those make its key. Rows are appended
to a JSON-lines file block by block as they are made; a line cut short by a crash is
ignored when read back. A rescan of the same folder (say with ``--labels`` added)
reuses them all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..fsutil import to_jsonable, write_text

_PACKAGE = Path(__file__).parent.parent


def code_digest() -> str:
    """Digest of the package's source files (about 300 kB, a millisecond): rows made by other code
    (a changed rule, score or measurement) are made again."""
    h = hashlib.blake2b(digest_size=8)
    for f in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(f.relative_to(_PACKAGE)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def bank_key(bank_meta: dict, train_shas: list[str]) -> str:
    """Key part of the bank and the code: what the bank's features, index and calibration follow from
    (backbone identity, settings, condition standardiser, the training images' bytes), not when it
    was written, so that re-indexing an unchanged folder keeps the rows."""
    settings = {k: bank_meta.get(k) for k in ("identity", "root", "k", "index", "conditions", "scorer")}
    text = json.dumps([settings, code_digest()], sort_keys=True, default=str) + "\n".join(map(str, train_shas))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def read_rows(path: Path, keys: set[str]) -> dict[str, dict]:
    """The rows of ``path`` whose key is in ``keys`` (a missing file or a broken line gives none)."""
    out: dict[str, dict] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:  # the last line of a killed run
                    continue
                if isinstance(entry, dict) and entry.get("key") in keys:
                    out[entry["key"]] = entry["row"]
    except OSError:
        pass
    return out


def append_rows(path: Path, keys: list[str], rows: list[dict]) -> None:
    """Append ``rows`` under ``keys`` and flush them to disk (rows naming no cause are not kept:
    an image or neighbour that could not be read may be readable next time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(_lines(zip(keys, rows)))
        f.flush()
        os.fsync(f.fileno())


def keep_only(path: Path, rows: dict[str, dict]) -> None:
    """Rewrite ``path`` (atomically) with only ``rows``: rows of other banks or code go."""
    write_text(path, _lines(rows.items()))


def _lines(items) -> str:
    """One JSON line per (key, row); NaN kept as JSON's NaN (read back by Python only)."""
    return "".join(json.dumps({"key": k, "row": r}, default=to_jsonable) + "\n"
                   for k, r in items if r.get("cause") != "unknown")
