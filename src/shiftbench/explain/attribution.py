"""Attribute each flagged image to a cause by intervention.

For a flagged production image ``x`` with fused score ``s`` and each candidate
cause ``c`` (lighting, angle, resolution, pipeline), its nearest training images
(the ``n_neighbours`` nearest in the penultimate view and the nearest in each
early-layer view: :func:`_neighbours`) are given ``x``'s conditions of kind ``c`` (:mod:`.interventions`),
embedded and measured like any image, and added to the reference set; ``x`` is
scored again, giving ``s_c <= s``. The share of the distance that ``c``
explains is::

    share_c = (s - s_c) / (s - s_typical)      clipped to [0, 1]

with ``s_typical`` the median score of training images (leave-one-out): 1 means
that under ``c`` alone the training set would contain images as close to ``x``
as training images are to each other. ``cause`` is the best-explaining cause
when its share reaches ``MIN_SHARE`` (further causes that explain at least half
as much are appended with ``+``), else ``content``: no condition change
explains the image, so it shows something the training set does not.
``confidence`` is how decisively that call was made: ``1 - second/best`` share for
a condition cause, ``1 - best/MIN_SHARE`` for content.

Lighting must also be undone (:func:`_undo_lighting`): ``x`` relit to its nearest
training images' lighting must lose at least ``MIN_UNDO`` of its distance, unless
``x`` clips (a clipped tone cannot be restored). A histogram is cheap to imitate:
relighting steel with the flat tone of another plant's images explains a fifth of
their distance, but stretching those images back to steel's tone leaves them as far
as before, since what differs is the content. Where ``x`` shows more vignetting or more
uneven light than most training images (:func:`~.ranges.light_field_range`), its light field alone
is also given the neighbour's: matching a vignetted texture's histogram to another
texture's changed its tones as much as the vignette had.

Lighting and a camera's angle keep the pixel grid: an image whose height or width lies
outside the training images' range (:func:`~.ranges.new_pixel_size`) came from another camera or pipeline, and
neither is named for it alone. Such an image is ``resolution`` or ``pipeline`` where
those explain it, else ``content`` (steel of another plant, stretched to the training
set's tone, is otherwise "explained" by a relighting). An image with fewer pixels than a
neighbour on both sides also gets that neighbour resized to its pixel size as a
resolution counterfactual: the same view through a lower-resolution camera, where the two have
the same width-to-height ratio (within ``ASPECT_TOLERANCE``). Where they do not, the nearest
neighbour squashed to the image's pixel size is a pipeline counterfactual instead (a wrong resize:
the model squashes it back, as it does the image). A blur, noise or
compression of a neighbour on its own pixel grid keeps that grid too, so at a new pixel size only
the resize is made (another plant's images, larger than the training ones, were otherwise
"explained" 0.07-0.36 by noise added to a neighbour). A camera
tilted against the surface foreshortens it, which a rotation cannot give a texture: each
neighbour is also seen through the stretched pose after which its gradient orientations best
match ``x``'s, or where the two share features (a part), the sheared one
(:func:`~.pose.tilted_pose`), where one matches better than none. A camera
moved away shows the scene smaller: each neighbour is also zoomed out by ``ZOOM_OUT`` (fixed:
a texture's scale is not read reliably from one pair of spectra, where the two images' own
texture scales differ as much as such a zoom; :func:`~.pose.zoom_between` reads magnification only).

Three counterfactuals are held to a stricter bar, since they fit more than their cause:
that resized neighbour and the zoomed-out one (another line's images, resized, come closer
by their texture's scale alone) and the stretched or sheared pose (a motion blur changes a
texture's gradient orientations as a stretch does). Each counts only where it makes ``x`` look in
distribution (p-value at least ``STRICT_MIN_P``) or explains most of its distance alone (share
at least ``STRICT_SHARE``: a neighbour that is another instance of a part rarely brings ``x``
into distribution, however well it shows the change).

Last, :func:`~.agreement.agree_with_neighbours` lets alike flagged images agree: one failure mode
changes many images' conditions alike, so an image whose most alike flagged images
mostly name another cause takes theirs.

``MIN_SHARE`` and the number of neighbours were chosen on the steel benchmark
(``scripts/bench_attribution.py``, docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..embedding import Backbone, embed_arrays
from ..embedding.extract import model_scale
from ..images import read_image
from ..properties.measures import measure_views
from ..scoring import FusedKNNScorer, with_conditions
from .clusters import MIN_UNDO
from .interventions import degrade_like, grey_noise, is_cast, is_colour, pipeline_faults, to_grey
from .lighting import match_exposure, refield_like, relight_like
from .ranges import unusual_light_field
from .pose import apply_pose, estimate_pose, tilted_pose
from .views import Views, cached, each, views

CAUSES = ("lighting", "angle", "resolution", "pipeline")
MIN_SHARE = 0.2
CLIPPED = 0.01  # share of shadow plus highlight pixels above which lighting is not asked to be undone
# p-value that a resized neighbour or a stretched or sheared pose must give x. Resized to x's smaller pixel
# size: images of the same line reached 0.03 and more, another line's 0.015 at most; stretched:
# sheared images reach a median 0.10, motion-blurred ones 0.008 (docs/benchmarks.md)
STRICT_MIN_P = 0.02
# ...or explain at least this share of x's distance alone. Another line's images came closer by a
# resize or a zoom-out by 0.25 at most, motion blurs by a stretch by 0.53; a part seen through a
# camera of half the resolution, by its resized neighbours (another instance each), by 0.74-1.0
STRICT_SHARE = 0.7
STRICT = ("resized", "stretch", "shear", "moved away")  # how those counterfactuals' descriptions begin
# the zoom of a camera moved away: zoomed-out textures (x0.72-0.85) were explained by 0.8 as by
# their own zoom, other lines' images by neither (docs/benchmarks.md)
ZOOM_OUT = 0.8
# width-to-height ratios further apart than this (relative) are another pipeline's resize, not another camera
ASPECT_TOLERANCE = 0.1
BLOCK = 16  # flagged images whose counterfactuals are made, then embedded, together


def _counterfactuals(x: Views, x_meas: dict, neighbours: list[Views], scale: dict[str, float],
                     optics_known: list[dict] | None = None,
                     new_size: bool = False) -> tuple[dict[str, list[tuple[Views, str]]], float]:
    """cause -> [(transformed neighbour, how)] for one production image, and its median rotation.
    ``new_size``: ``x`` is at a pixel size the training images do not have, so a degradation of a
    neighbour on its own pixel grid is not made (only its resize to ``x``'s size)."""
    out: dict[str, list] = {c: [] for c in CAUSES}
    rotations = []
    known = optics_known or [None] * len(neighbours)
    x_cache: dict = {}  # x's own features, orientations, spectrum: computed once for all neighbours
    for i, n in enumerate(neighbours):
        out["lighting"].append((relight_like(n, x, x_cache), "relit"))
        pose = estimate_pose(n, x, x_cache)
        rotations.append(pose.rotation)
        warped, how = apply_pose(n, pose)
        if warped is not n:  # an unchanged neighbour is in the bank already: it cannot lower the score
            out["angle"].append((warped, how))
        if i == 0 and pose.homography is None and pose.zoom != 1.0 and pose.deg != 0:
            # the nearest also only rotated: a texture's zoom is read from its spectrum, which
            # another image's texture scale sways as much as a zoom does (a pure rotation
            # with a misread zoom explains nothing)
            out["angle"].append(apply_pose(n, pose, zoom=False))
        tilted = tilted_pose(n, x, pose, x_cache)
        if tilted is not None:
            out["angle"].append(apply_pose(n, tilted[0]))
        away = dataclasses.replace(pose, homography=None, deg=0.0, conf=1.0, zoom=ZOOM_OUT, tilt=None)
        out["angle"].append((apply_pose(n, away)[0], f"moved away, zoom {ZOOM_OUT:.2f}"))
        if not new_size:
            grey = cached(x_cache, ("grey noise",), lambda: grey_noise(x.crop))
            degraded, how = degrade_like(n, x_meas, scale, known[i], grey)
            if degraded is not n:
                out["resolution"].append((degraded, how))
        if i == 0:  # discrete faults are all-or-nothing: one neighbour shows them (and saves embeddings)
            out["pipeline"] += [(img, name) for name, img in pipeline_faults(n, grey=not is_colour(x.whole)).items()]
        squashed = aspect_changed(x.shape, n.shape)
        smaller = x.shape[0] < n.shape[0] and x.shape[1] < n.shape[1]
        if n.image is not None and (squashed and i == 0 or smaller and not squashed):
            # the neighbour at x's pixel size: a wrong resize (another width-to-height ratio; a discrete
            # fault, from the nearest only), else the same view through a lower-resolution camera
            at_x = views(cv2.resize(n.image, (x.shape[1], x.shape[0]), interpolation=cv2.INTER_AREA), x.whole.shape[:2])
            how = f"resized to {x.shape[1]}x{x.shape[0]}"
            out["pipeline" if squashed else "resolution"].append(
                (at_x, f"{how} (aspect ratio changed)" if squashed else how))
    return out, float(np.median(rotations)) if rotations else float("nan")


def _measure(v: Views) -> dict:
    """Measurements of made views, as :func:`~shiftbench.properties.measure` measures an image."""
    return measure_views(v.overview(), v.crop, v.shape[1] / v.shape[0])


def _make(x: Views, x_meas: dict, neighbours: list[Views], conditions: dict,
          optics_known: list[dict] | None = None,
          new_size: bool = False) -> tuple[list[tuple[str, Views, str]], list[dict], float]:
    """Counterfactuals of ``x`` as (cause, views, how), their measurements and ``x``'s rotation:
    all of an image's attribution that needs no model (run ahead of it by :func:`attribute`)."""
    cands, rotation = _counterfactuals(x, x_meas, neighbours, _spread(conditions), optics_known, new_size)
    flat = [(c, v, how) for c, items in cands.items() for v, how in items]
    return flat, [_measure(v) for _, v, _ in flat], rotation


def attribute_one(x: Views, x_features: np.ndarray, x_meas: dict, x_score: float,
                  neighbours: list[Views], scorer: FusedKNNScorer, backbone: Backbone,
                  conditions: dict, optics_known: list[dict] | None = None, made: tuple | None = None,
                  made_features: np.ndarray | None = None, new_size: bool = False,
                  light_range: dict | None = None) -> dict:
    """Shares explained by each cause for one image; see the module docstring.

    Parameters
    ----------
    x : the production image (:func:`~.views.views` of an (H, W, 3) uint8 image at the
        model's input scale); ``x_features`` its (D,) features with the conditions view;
        ``x_meas`` its measurements; ``x_score`` its fused score.
    neighbours : its nearest training images, as views like ``x``.
    conditions : the bank's condition standardiser.
    optics_known : optional, one dict per neighbour kept across calls (see
        :func:`~.interventions.degrade_like`).
    made : optional, what :func:`_make` returns for these arguments, made beforehand;
        ``made_features`` optionally its counterfactuals' (K, D) features, embedded beforehand.
    new_size : whether ``x``'s pixel size is outside the training images' range (:func:`~.ranges.new_pixel_size`):
        then neither lighting nor angle is named, and resolution only by a resize to ``x``'s size.
    light_range : :func:`~.ranges.light_field_range` of the training images: where ``x``'s vignetting or uneven
        light exceeds it, undoing lighting may also change only ``x``'s light field (:func:`_undo_lighting`).

    Returns
    -------
    dict with ``share_<cause>`` for each cause, ``how_<cause>`` (the estimated change,
    e.g. ``rotate -21``), ``rotation_deg`` (estimated in-plane rotation against the
    neighbours: the median of their plain poses', without a stretch), ``undo_lighting``
    (the share removed by relighting ``x`` like its neighbours; NaN where lighting would
    not be named anyway), ``cause``, ``confidence``, ``residual_score``
    (the score under the best-explaining change that was not ruled out) and
    ``residual_p`` (its conformal p-value: at least the scan's ``fpr`` when that change
    alone makes the image look in-distribution).
    """
    flat, measures, rotation = made or _make(x, x_meas, neighbours, conditions, optics_known, new_size)
    feats = _embed([v for _, v, _ in flat], backbone, conditions, measures) if made_features is None \
        else made_features
    span = max(x_score - float(np.median(scorer.calibration_.scores)), 1e-9)

    def share(s_c: float) -> float:  # of x's distance above a typical training image's
        return float(np.clip((x_score - s_c) / span, 0.0, 1.0))

    row: dict = {"rotation_deg": rotation}
    explained = {}  # cause -> x's score with that cause's counterfactuals in the bank
    for c in CAUSES:
        idx = [i for i, (cc, _, _) in enumerate(flat) if cc == c]
        if idx:  # each counterfactual alone: the one that explains most describes the change
            alone = scorer.score_with(np.repeat(x_features[None], len(idx), axis=0), feats[idx][:, None])
            strict = np.array([flat[i][2].startswith(STRICT) for i in idx])
            if strict.any():  # a lower-resolution camera or a tilt must account for x, not only come closer
                ok = ~strict | (scorer.calibration_.p_values(alone) >= STRICT_MIN_P) | \
                    ((x_score - alone) / span >= STRICT_SHARE)
                idx, alone = [i for i, k in zip(idx, ok) if k], alone[ok]
        if not idx:  # no neighbour needed a change of this kind to look like x
            s_c, how = x_score, "none"
        else:
            how = flat[idx[int(np.argmin(alone))]][2]
            # discrete pipeline faults count one by one, other changes with all their counterfactuals
            together = c != "pipeline" and len(idx) > 1  # (one counterfactual: scored already)
            s_c = scorer.score_with(x_features[None], feats[idx][None])[0] if together else float(alone.min())
        row[f"share_{c}"] = share(s_c)
        row[f"how_{c}"] = how
        explained[c] = s_c
    if neighbours and is_colour(x.whole) and not is_colour(neighbours[0].whole) and not is_cast(x.whole):
        # colour where the training images are grey: no neighbour can be given colour, so x loses it
        # (a cast, coloured light on grey parts, is lighting: relighting matches it channel by channel)
        s_grey = float(scorer.score(_embed([each(x, to_grey)], backbone, conditions))[0][0])
        if share(s_grey) > row["share_pipeline"]:
            row["share_pipeline"], row["how_pipeline"], explained["pipeline"] = \
                share(s_grey), "colour where training is grey", s_grey
    shares = {c: row[f"share_{c}"] for c in CAUSES}
    row["undo_lighting"] = np.nan
    if new_size:  # the same camera under other light or at another angle gives the same pixel grid
        for c in ("lighting", "angle"):
            shares[c] = 0.0
            del explained[c]
    clipped = x_meas.get("shadows_clipped", 0.0) + x_meas.get("highlights_clipped", 0.0)
    # asked only where lighting would be named (an unmeasured clip is asked too)
    if shares["lighting"] >= max(MIN_SHARE, 0.5 * max(shares.values())) and not (clipped >= CLIPPED):
        row["undo_lighting"] = share(_undo_lighting(x, neighbours[:2], scorer, backbone, conditions,
                                                    unusual_light_field(x_meas, light_range)))
        if row["undo_lighting"] < MIN_UNDO:
            shares["lighting"] = 0.0  # imitated but not undone: the lighting does not explain x
            del explained["lighting"]
    ranked = sorted(shares, key=shares.get, reverse=True)
    best = shares[ranked[0]]
    if best >= MIN_SHARE:
        row["cause"] = "+".join(c for c in ranked if shares[c] >= max(MIN_SHARE, 0.5 * best))
        row["confidence"] = float(1.0 - shares[ranked[1]] / best)
    else:
        row["cause"] = "content"
        row["confidence"] = float(1.0 - best / MIN_SHARE)
    residual = min(x_score, *explained.values())
    row["residual_score"] = float(residual)
    row["residual_p"] = float(scorer.calibration_.p_values(np.array([residual]))[0])
    return row


def _embed(images: list[Views], backbone: Backbone, conditions: dict, measures: list[dict] | None = None) -> np.ndarray:
    """(N, D) features with the conditions view, as the bank stores them: the wholes embedded,
    and measured (unless ``measures`` are given) by :func:`_measure`."""
    feats = embed_arrays([v.whole for v in images], backbone)
    meas = measures if measures is not None else [_measure(v) for v in images]
    return with_conditions(feats, pd.DataFrame(meas).assign(status="ok"), conditions)


def _undo_lighting(x: Views, neighbours: list[Views], scorer: FusedKNNScorer, backbone: Backbone,
                   conditions: dict, field: bool = False) -> float:
    """The lowest score of ``x`` relit like one of ``neighbours`` (scored against the whole bank): its
    histogram and light field matched (an exposure, gamma or cast); with ``field``, also only its
    light field, with or without its mean and spread (a vignette over a texture, whose histogram
    is not the neighbour's)."""
    undone = []
    for n in neighbours:
        undone.append(relight_like(x, n))
        if field:
            even = refield_like(x, n)
            undone += [even, match_exposure(even, n)]
    return float(scorer.score(_embed(undone, backbone, conditions))[0].min())


def aspect_changed(shape: tuple, other: tuple, tolerance: float = ASPECT_TOLERANCE) -> bool:
    """Whether two (H, W, ...) shapes' width-to-height ratios differ by more than ``tolerance`` (relative)."""
    a, b = shape[1] / max(shape[0], 1), other[1] / max(other[0], 1)
    return max(a, b) / max(min(a, b), 1e-9) > 1.0 + tolerance


def _threads() -> int:
    """Usable CPU cores (at most 8): threads that make counterfactuals side by side."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _spread(conditions: dict) -> dict[str, float]:
    return dict(zip(conditions["columns"], conditions["scale"]))


def _neighbours(scorer: FusedKNNScorer, features: np.ndarray, n: int) -> list[list[int]]:
    """Training rows to transform for each of (M, D) features: the ``n`` nearest in the first
    view, then the nearest in every other embedding view, without repeats.

    Each view scores against its own nearest training image, and a shift's evidence
    sits mostly in the early-layer views (lighting, blur, texture orientation), whose
    nearest image is often not the penultimate one's; a counterfactual can only lower a
    view's distance if it starts from an image that is close in that view.
    """
    per_view = [nn[:, :n] if j == 0 else nn[:, :1]
                for j, (name, nn) in enumerate(scorer.nearest(features, n).items())
                if name not in scorer.raw_views]
    return [list(dict.fromkeys(int(t) for nn in per_view for t in nn[i] if t >= 0))
            for i in range(len(features))]


def attribute(table: pd.DataFrame, features: np.ndarray, prod_root: str | Path, train_root: str | Path,
              train_paths: np.ndarray, scorer: FusedKNNScorer, backbone: Backbone, conditions: dict,
              n_neighbours: int = 3, new_size: np.ndarray | None = None, light_range: dict | None = None,
              progress=None, on_block=None) -> pd.DataFrame:
    """Attribute the rows of ``table`` (scan rows: path, ood_score and measurements).

    ``features`` (N, D) are their features with the conditions view;
    ``train_paths`` the training path of each scorer row; ``n_neighbours`` the
    nearest training images taken from the penultimate view (one more from each
    early-layer view); ``new_size`` (N,) bool, the rows at a pixel size outside the training
    images' range (:func:`~.ranges.new_pixel_size`; none if not given); ``light_range`` the training images'
    :func:`~.ranges.light_field_range` (:func:`attribute_one`). Returns a frame indexed
    like ``table`` with the columns of :func:`attribute_one`; rows whose image or
    neighbours cannot be read get cause ``unknown`` and the reason in ``how_lighting``.
    ``on_block(positions, rows)`` is called as each block of rows is done (to keep them:
    :mod:`.memo`).
    """
    nn = _neighbours(scorer, features, n_neighbours)
    new_size = np.zeros(len(table), dtype=bool) if new_size is None else np.asarray(new_size, dtype=bool)
    optics_known: dict[int, dict] = {}  # training row -> optics of its degradations (small dicts)

    def load(path: Path) -> Views:  # worked on at the scale the model sees it (and a crop)
        img = read_image(path)
        return views(img, model_scale(*img.shape[:2], backbone.preprocess))

    def prepare(j: int) -> tuple | str:  # reading and counterfactuals: the CPU work that needs no model
        r = table.iloc[j]
        try:
            x = load(Path(prod_root) / r["path"])
            nbrs = [load(Path(train_root) / train_paths[t]) for t in nn[j]]
        except Exception as e:  # moved or unreadable files: no attribution for this image
            return f"cannot read: {e}"
        x_meas = {c: r[c] for c in r.index if isinstance(r[c], (int, float, np.floating))}
        return x, nbrs, x_meas, _make(x, x_meas, nbrs, conditions, [optics_known.setdefault(t, {}) for t in nn[j]],
                                      bool(new_size[j]))

    rows = []
    # A block of images at a time: their counterfactuals are made in parallel (OpenCV and numpy
    # release the GIL; mostly single-threaded work), then embedded together with all of torch's threads.
    # Threads share optics_known, whose entries depend only on the training image and the candidate:
    # whichever thread measures one first, the result is the same.
    with ThreadPoolExecutor(max_workers=_threads()) as pool:
        for lo in range(0, len(table), BLOCK):
            block = list(range(lo, min(lo + BLOCK, len(table))))
            prepared = list(pool.map(prepare, block))
            made = [p[3] for p in prepared if not isinstance(p, str)]
            feats = _embed([v for flat, _, _ in made for _, v, _ in flat], backbone, conditions,
                           [m for _, measures, _ in made for m in measures]) if made else None
            per_image = iter(np.split(feats, np.cumsum([len(flat) for flat, _, _ in made])[:-1]) if made else [])
            for j, current in zip(block, prepared):
                if isinstance(current, str):
                    rows.append({"cause": "unknown", "confidence": 0.0, "how_lighting": current})
                    continue
                x, nbrs, x_meas, mine = current
                rows.append(attribute_one(x, features[j], x_meas, float(table["ood_score"].iloc[j]), nbrs, scorer,
                                          backbone, conditions, made=mine, new_size=bool(new_size[j]),
                                          made_features=next(per_image), light_range=light_range))
                if progress:
                    progress(j + 1, len(table))
            if on_block:
                on_block(block, rows[-len(block):])
    return pd.DataFrame(rows, index=table.index)
