"""Attribution and clustering: interventions recover known changes; clusters follow causes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from shiftbench.explain import agree_with_neighbours, light_field_range, new_pixel_size
from shiftbench.explain.ranges import unusual_light_field
from shiftbench.explain.clusters import cluster_cards, cluster_flagged, describe_change
from shiftbench.explain.interventions import BLOCKY, degrade, degrade_like, pipeline_faults
from shiftbench.explain.lighting import match_exposure, refield_like, relight_like
from shiftbench.explain.pose import (_cosine, _orientation_hist, _tilt, apply_pose, estimate_pose,
                                     orientation_similarity, rotation_between, tilted_pose, warp_like, zoom_between)
from shiftbench.explain.views import views
from shiftbench.properties import measure
from shiftbench.properties.measures import centre_crop, optics, optics_parts
from shiftbench.scoring import FusedKNNScorer, KNNScorer


def texture(seed: int, size: int = 160, angle: float = 30.0) -> np.ndarray:
    """Oriented random texture (streaks along ``angle`` degrees), grey as RGB uint8."""
    rng = np.random.default_rng(seed)
    g = rng.normal(0, 1, (size * 2, size * 2)).astype(np.float32)
    g = cv2.GaussianBlur(g, (0, 0), sigmaX=6, sigmaY=0.8)  # long streaks along x
    m = cv2.getRotationMatrix2D((size, size), angle, 1.0)
    g = cv2.warpAffine(g, m, (size * 2, size * 2), borderMode=cv2.BORDER_REFLECT_101)
    g = g[size // 2:size // 2 + size, size // 2:size // 2 + size]
    g = (g - g.mean()) / g.std() * 40 + 128
    return np.repeat(np.clip(g, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def rotate(img: np.ndarray, deg: float, zoom: float = 1.0) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), deg, zoom)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)


# ------------------------------------------------------------------ interventions

def test_relight_gives_the_reference_brightness_and_gradient():
    src, other = texture(0), texture(1)
    x = other.astype(np.float32) * 0.45  # darker ...
    x *= np.linspace(0.7, 1.3, x.shape[1])[None, :, None]  # ... and lit from the right
    x = np.clip(x, 0, 255).astype(np.uint8)
    out = measure(relight_like(views(src), views(x)).whole)
    want, before = measure(x), measure(src)
    assert abs(out["brightness"] - want["brightness"]) < 0.02 < abs(before["brightness"] - want["brightness"])
    assert abs(out["illum_gradient"] - want["illum_gradient"]) < 0.35 * want["illum_gradient"]
    assert abs(out["illum_direction"] - want["illum_direction"]) < 20


def part_on_belt(seed: int, size: int = 128) -> np.ndarray:
    """A bright plate with a hole in the middle of a dark textured belt (a structured scene)."""
    g = 40 + 0.3 * (texture(seed, size)[..., 0].astype(np.float32) - 128)
    q = size // 4
    g[q:size - q, q:size - q] = 190 + 0.2 * (g[q:size - q, q:size - q] - 40)
    cv2.circle(g, (size // 2, size // 2), size // 10, 35.0, -1)
    return np.repeat(np.clip(g, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_relighting_a_part_back_paints_no_vignette():
    """A part in the middle of the frame is not uneven light: relit to its own scene's lighting,
    a gamma-brightened copy comes back everywhere, corners included (a curved illumination
    surface fitted the bright part, and moving it darkened the corners and burnt the centre)."""
    scene = part_on_belt(0)
    x = (255 * (scene / 255.0) ** 0.45).astype(np.uint8)
    back = relight_like(views(x), views(scene)).whole.astype(np.float32)
    err = np.abs(back - scene)
    corners = np.concatenate([err[:16, :16].ravel(), err[-16:, -16:].ravel()])
    assert err.mean() < 4.0 and corners.mean() < 4.0, (err.mean(), corners.mean())


def vignetted(img: np.ndarray, strength: float) -> np.ndarray:
    """``img`` under a lens falloff: corners ``strength`` darker than the centre."""
    h, w = img.shape[:2]
    y, x = np.ogrid[-1:1:h * 1j, -1:1:w * 1j]
    return np.clip(img * (1 - strength * (x * x + y * y) / 2)[..., None], 0, 255).astype(np.uint8)


@pytest.mark.parametrize("scene", [texture, part_on_belt])
def test_relighting_gives_a_neighbour_the_vignette_and_undoes_it(scene):
    """A vignette is no plane: relit like a vignetted image, a neighbour's corners darken as much
    (on a part in the middle of the frame as on a texture), and relit back they brighten again."""
    src, other = scene(0), scene(1)
    x = vignetted(other, 0.4)
    want, plain = measure(x)["vignetting"], measure(src)["vignetting"]
    assert abs(measure(relight_like(views(src), views(x)).whole)["vignetting"] - want) < 0.1 < abs(want - plain)
    assert abs(measure(relight_like(views(x), views(src)).whole)["vignetting"] - plain) < 0.1
    # no vignette where there is none: a neighbour relit like an even image keeps its own falloff
    assert abs(measure(relight_like(views(src), views(other)).whole)["vignetting"] - plain) < 0.05


def test_relighting_makes_the_vignette_on_a_large_image_s_crop_too():
    big = [cv2.resize(texture(s), (640, 640), interpolation=cv2.INTER_CUBIC) for s in (0, 1)]
    x = vignetted(big[1], 0.4)
    out = relight_like(views(big[0], (160, 160)), views(x, (160, 160)))
    assert not out.single
    # the crop (the middle 256 px) darkens towards its edges as x's middle did (by 3.5%)
    ring = lambda a: a[:, :16].mean() / a[112:144, 112:144].mean()  # noqa: E731
    made = ring(out.crop.astype(float) / np.maximum(centre_crop(big[0]), 1))
    want = ring(centre_crop(x.astype(float) / np.maximum(big[1], 1)))
    assert abs(made - want) < 0.01 and want < 0.97


def test_refielding_takes_the_vignette_off_a_texture_and_keeps_its_tones():
    """Undoing uneven light without a neighbour's histogram: a vignetted texture given a
    neighbour's light field is lit evenly again (a histogram matched to another texture would
    change its tones too); with ``tone`` it also takes the neighbour's exposure."""
    other = texture(1)
    src = np.clip(texture(0).astype(np.float32) * 0.8 + 30, 0, 255).astype(np.uint8)  # another exposure
    x = vignetted(other, 0.45)
    back = refield_like(views(x), views(src))

    def light(img):  # x's light over the unvignetted texture's, smoothed: 1 everywhere for an even light
        low = lambda a: cv2.resize(a[..., 0].astype(np.float32), (8, 8), interpolation=cv2.INTER_AREA)  # noqa: E731
        r = low(img) / low(other)
        return r / r.mean()
    assert np.abs(light(back.whole) - 1).max() < 0.05 < 0.2 < np.abs(light(x) - 1).max()
    # its falloff is now the neighbour's
    assert abs(measure(back.whole)["vignetting"] - measure(src)["vignetting"]) < 0.03 < 0.3 < measure(x)["vignetting"]
    toned = measure(match_exposure(refield_like(views(x), views(src)), views(src)).whole)
    assert abs(toned["brightness"] - measure(src)["brightness"]) < 0.01
    assert abs(toned["contrast"] - measure(src)["contrast"]) < 0.01


def test_refielding_a_large_image_changes_its_crop_alike():
    big = [cv2.resize(texture(s), (640, 640), interpolation=cv2.INTER_CUBIC) for s in (0, 1)]
    x = vignetted(big[1], 0.4)
    out = match_exposure(refield_like(views(x, (160, 160)), views(big[0], (160, 160))), views(big[0], (160, 160)))
    assert not out.single and out.crop.shape == centre_crop(x).shape
    # the crop is the middle of the full-resolution image refielded: compare with the whole's middle
    mid = cv2.resize(out.crop, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    whole_mid = cv2.resize(out.whole[48:112, 48:112], (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert abs(mid.mean() - whole_mid.mean()) < 2.0


def test_only_an_unusual_light_field_is_undone_by_the_field():
    """The field alone is tried only where the image shows more vignetting or more uneven light than
    95% of the training images (another plant's flat-lit images keep the stricter histogram test);
    unreadable training rows and missing measurements count for nothing."""
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"status": ["ok"] * 200 + ["unreadable"],
                          "vignetting": np.r_[rng.normal(0.0, 0.2, 200), 9.0],
                          "illum_gradient": np.r_[rng.uniform(0.05, 0.3, 200), np.nan]})
    top = light_field_range(train)
    assert 0.2 < top["vignetting"] < 0.5 and 0.25 < top["illum_gradient"] < 0.3
    assert unusual_light_field({"vignetting": 0.6, "illum_gradient": 0.1}, top)
    assert unusual_light_field({"vignetting": 0.0, "illum_gradient": 0.5}, top)
    assert not unusual_light_field({"vignetting": 0.0, "illum_gradient": 0.1}, top)
    assert not unusual_light_field({"vignetting": -0.9, "illum_gradient": 0.0}, top)  # flatter: no light to undo
    assert not unusual_light_field({"vignetting": np.nan}, top)
    assert not unusual_light_field({"vignetting": 0.6}, None)
    assert light_field_range(train.drop(columns="vignetting")).keys() == {"illum_gradient"}


@pytest.mark.parametrize("deg", [-25.0, 12.0, 30.0])
def test_rotation_between_two_samples_of_a_texture(deg):
    est, conf = rotation_between(texture(0), rotate(texture(1), deg))
    assert abs(est - deg) < 4 and conf > 0.2


def test_rotation_of_an_isotropic_texture_has_low_confidence():
    rng = np.random.default_rng(0)
    iso = [np.repeat(cv2.GaussianBlur(rng.integers(0, 255, (128, 128), dtype=np.uint8), (0, 0), 1.5)[..., None],
                     3, 2) for _ in range(2)]
    assert rotation_between(iso[0], rotate(iso[1], 20))[1] < 0.15 < rotation_between(texture(0), texture(1))[1]


def test_zoom_between_finds_the_magnification():
    assert zoom_between(texture(0, angle=0), rotate(texture(1, angle=0), 0, 1.3)) == pytest.approx(1.3, abs=0.16)
    assert zoom_between(texture(0, angle=0), texture(1, angle=0)) == pytest.approx(1.0, abs=0.16)


def test_a_textures_first_neighbour_is_also_only_rotated():
    """The zoom read from a texture's spectrum is weak evidence: the nearest neighbour's angle
    counterfactuals hold the rotation with and without it."""
    from shiftbench.explain.attribution import _counterfactuals

    src, ref = views(texture(0, angle=20)), views(rotate(texture(1, angle=20), 25, 1.3))
    pose = estimate_pose(src, ref)
    assert pose.homography is None and pose.zoom > 1.0 and pose.deg == pytest.approx(25, abs=4)
    zoomed, how = apply_pose(src, pose)
    plain, how_plain = apply_pose(src, pose, zoom=False)
    assert how.endswith(f"zoom {pose.zoom:.2f}") and how_plain.endswith("zoom 1.00")
    assert np.array_equal(plain.whole, apply_pose(src, dataclasses.replace(pose, zoom=1.0))[0].whole)
    assert not np.array_equal(plain.whole, zoomed.whole)
    scale = {"sharpness": 1.0, "hf_ratio": 0.01, "blockiness": 0.1, "blur_anisotropy": 0.1, "noise": 0.01}
    out, rotation = _counterfactuals(ref, measure(ref.whole), [src, views(texture(2, angle=20))], scale)
    hows = [how for _, how in out["angle"] if not how.startswith("moved away")]  # (one per neighbour)
    assert len(out["angle"]) - len(hows) == 2
    assert len(hows) == 3 and hows[:2] == [how, how_plain] and rotation == pytest.approx(25, abs=4)


def hatch(seed: int, size: int = 160) -> np.ndarray:
    """Two streak directions 60 degrees apart: a rotation keeps their angle, a stretch does not."""
    return np.maximum(texture(seed, size, 0), texture(seed + 100, size, 60))


def stretch(img: np.ndarray, a: float, phi: float) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, _tilt("stretch", a, phi, w, h)[:2], (w, h), borderMode=cv2.BORDER_REFLECT_101)


@pytest.mark.parametrize("a,phi,deg", [(1.25, 45, 0.0), (1.25, 45, 15.0), (1.12, 135, -10.0), (1.25, 90, 10.0)])
def test_tilted_pose_reads_a_tilted_cameras_foreshortening(a, phi, deg):
    src, ref = views(hatch(0)), views(rotate(stretch(hatch(1), a, phi), deg))
    pose = estimate_pose(src, ref)
    got, similarity = tilted_pose(src, ref, pose)
    assert got.tilt == ("stretch", a, phi) and got.deg == pytest.approx(deg, abs=4)
    warped, how = apply_pose(src, got)
    assert how.startswith(f"stretch {a:.2f} along {phi}, rotate {got.deg:+.0f}")
    target = _orientation_hist(ref.whole)
    # the stretched neighbour's orientations match the tilted image's better than the rotated one's do
    plain = orientation_similarity(_orientation_hist(apply_pose(src, pose)[0].whole), target)
    assert orientation_similarity(_orientation_hist(warped.whole), target) > plain
    assert similarity > orientation_similarity(_orientation_hist(src.whole), target)


def plate(seed: int, size: int = 160) -> np.ndarray:
    """A bright rectangular part with holes, of a size drawn from ``seed``, on dark horizontal streaks."""
    rng = np.random.default_rng(seed)
    img = (texture(seed, size, 0).astype(np.float32) * 0.3).astype(np.uint8)
    w, h = int(rng.integers(70, 100)), int(rng.integers(50, 70))
    x0, y0 = (size - w) // 2, (size - h) // 2
    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), (200, 200, 200), -1)
    for cx, cy in [(x0 + 10, y0 + 10), (x0 + w - 10, y0 + h - 10), (size // 2, size // 2)]:
        cv2.circle(img, (cx, cy), 5, (30, 30, 30), -1)
    return img


def test_tilt_maps_move_points_as_named():
    m = _tilt("shear", 0.25, 0, 101, 101)  # centre (50, 50): x moves by 0.25 times the offset in y
    assert m @ [60, 70, 1] == pytest.approx([65, 70, 1])
    m = _tilt("shear", 0.25, 90, 101, 101)  # along y, by the offset in x towards -x
    assert m @ [60, 70, 1] == pytest.approx([60, 67.5, 1])
    assert np.linalg.det(_tilt("stretch", 1.25, 30, 101, 101)[:2, :2]) == pytest.approx(1.0)


@pytest.mark.parametrize("t,phi", [(0.25, 0), (-0.25, 0), (0.25, 90)])
def test_a_part_seen_sheared_is_matched_by_the_shear_without_rotation(t, phi):
    """Two instances of a part: a homography between them fits shared features, not the camera;
    the shear that matches the sheared one's orientation histogram as it is was applied."""
    h, w = 160, 160
    src, ref = views(plate(1)), views(cv2.warpAffine(plate(2), _tilt("shear", t, phi, w, h)[:2], (w, h),
                                                     borderMode=cv2.BORDER_REFLECT_101))
    pose = dataclasses.replace(estimate_pose(src, ref), homography=np.eye(3))
    got, similarity = tilted_pose(src, ref, pose)
    assert got.tilt == ("shear", t, phi) and (got.homography, got.deg, got.zoom) == (None, 0.0, 1.0)
    warped, how = apply_pose(src, got)
    assert how == f"shear {t:.2f} along {phi}"
    target = _orientation_hist(ref.whole)
    assert similarity > _cosine(_orientation_hist(src.whole), target)


def test_warp_like_uses_a_homography_where_features_match():
    rng = np.random.default_rng(3)
    scene = np.zeros((200, 200, 3), np.uint8)
    for _ in range(40):  # corners and blobs that ORB can match
        x, y, r = rng.integers(10, 190, 2).tolist() + [int(rng.integers(4, 12))]
        cv2.rectangle(scene, (x, y), (x + r, y + r), rng.integers(60, 255, 3).tolist(), -1)
    warped, how, deg = warp_like(views(scene), views(rotate(scene, 15)))
    assert how.startswith("homography") and deg == pytest.approx(15, abs=2)


def _scene(h: int, w: int, n: int, seed: int = 3) -> np.ndarray:
    """Coloured squares on black: corners that ORB matches."""
    rng = np.random.default_rng(seed)
    scene = np.zeros((h, w, 3), np.uint8)
    for _ in range(n):
        x, y, r = int(rng.integers(30, w - 60)), int(rng.integers(30, h - 60)), int(rng.integers(15, 50))
        cv2.rectangle(scene, (x, y), (x + r, y + r), rng.integers(60, 255, 3).tolist(), -1)
    return scene


def test_a_large_image_is_worked_on_at_two_scales_that_agree():
    """The pose of a large image is estimated on its wholes; the warp made on the crop in
    full-resolution pixels equals the crop of the full-size warp."""
    import shiftbench.explain.pose as pose

    scene = _scene(1200, 1000, 120)
    target = rotate(scene, 12)
    src, ref = views(scene, (269, 224)), views(target, (269, 224))
    assert src.whole.shape == (269, 224, 3) and src.crop.shape == (256, 256, 3) and not src.single
    warped, how, deg = warp_like(src, ref)
    assert how.startswith("homography") and deg == pytest.approx(12, abs=2)
    assert warped.whole.shape == src.whole.shape and warped.crop.shape == src.crop.shape
    err = np.abs(warped.whole.astype(int) - ref.whole).mean()  # the whole lands on the target's
    assert err < 0.15 * np.abs(src.whole.astype(int) - ref.whole).mean()
    err = np.abs(warped.crop.astype(int) - ref.crop).mean()  # and so does the crop, at full resolution
    assert err < 0.1 * np.abs(src.crop.astype(int) - ref.crop).mean()
    # rotation and zoom (the texture fallback) agree across the scales too
    m = np.vstack([cv2.getRotationMatrix2D((111.5, 134.0), 20.0, 1.2), [0, 0, 1]])
    moved = pose._warp_views(src, m, affine=True)
    full = cv2.warpAffine(scene, cv2.getRotationMatrix2D((499.5, 599.5), 20.0, 1.2), (1000, 1200),
                          borderMode=cv2.BORDER_REFLECT_101)
    assert np.abs(moved.crop.astype(int) - views(full).crop).mean() < 3.0


def test_an_unchanged_squashed_image_is_measured_as_the_bank_measures_it():
    """A non-square image squashed to the model's 224 x 224 is measured with its proportions."""
    from shiftbench.explain.attribution import _measure

    img = rotate(cv2.resize(texture(2, angle=45), (1200, 1200)), 0)[:600]  # 600 x 1200, streaks at 45 degrees
    v = views(img, (224, 224))
    want, got = measure(img), _measure(v)
    assert got["orientation"] == pytest.approx(want["orientation"], abs=2)
    assert got["orientation_coherence"] == pytest.approx(want["orientation_coherence"], abs=0.05)
    assert got["brightness"] == pytest.approx(want["brightness"], abs=0.01)


@pytest.mark.parametrize("shape", [(1, 1), (3, 40), (20, 20)])
def test_a_tiny_image_gets_a_pose_without_crashing(shape):
    tiny = np.random.default_rng(0).integers(0, 255, shape + (3,), dtype=np.uint8)
    warped, how, deg = warp_like(views(tiny), views(texture(0)))
    assert warped.whole.shape == tiny.shape and not how.startswith("homography")


def test_a_tall_image_is_warped_as_sharply_as_a_wide_one():
    """The warped whole is made on a copy supersampled along both axes."""
    import shiftbench.explain.pose as pose

    for shape in ((1200, 600), (600, 1200)):
        img = cv2.resize(texture(3, angle=20), shape[::-1], interpolation=cv2.INTER_CUBIC)
        v = views(img, (224, 224))
        m = np.vstack([cv2.getRotationMatrix2D((111.5, 111.5), 10.0, 1.0), [0, 0, 1]])
        full = np.linalg.inv(v.to_whole()) @ m @ v.to_whole()
        truth = cv2.resize(cv2.warpAffine(img, full[:2], shape[::-1], borderMode=cv2.BORDER_REFLECT_101), (224, 224),
                           interpolation=cv2.INTER_AREA)
        moved = pose._warp_views(v, m, affine=True)
        assert np.abs(moved.whole.astype(int) - truth).mean() < 0.75, shape  # 0.99 on a 256 px wide copy


def test_a_large_image_is_relit_and_degraded_alike_at_both_scales(monkeypatch):
    """Candidates are measured on the full-resolution crop; the chosen blur lands on the whole
    as a full-size blur would; relighting gives crop and whole the reference's lighting."""
    import shiftbench.explain.interventions as iv

    big = cv2.resize(texture(0, angle=60), (900, 700), interpolation=cv2.INTER_CUBIC)
    blurred = cv2.GaussianBlur(big, (0, 0), 2.0)
    ref = {**measure(blurred), "blur_direction": 0.0}
    scale = {"sharpness": 1.0, "hf_ratio": 0.01, "blockiness": 0.1, "blur_anisotropy": 0.1, "noise": 0.01}
    shapes = []
    monkeypatch.setattr(iv, "optics_parts", lambda img: shapes.append(img.shape[:2]) or optics_parts(img))
    src = views(big, (224, 288))
    out, how = degrade_like(src, ref, scale)
    assert set(shapes) == {(256, 256)} and out.whole.shape == src.whole.shape and out.crop.shape == src.crop.shape
    assert how.split()[0] in ("blur", "downscale", "motion")
    made = views(iv.degrade(big, how.split(" + ")[0]), (224, 288))
    assert np.abs(out.whole.astype(int) - made.whole).mean() < 1.5
    dark = np.clip(texture(1, angle=60).astype(np.float32) * 0.5, 0, 255).astype(np.uint8)
    lit = relight_like(src, views(cv2.resize(dark, (900, 700))))
    for part in (lit.whole, lit.crop):
        assert measure(part)["brightness"] == pytest.approx(measure(dark)["brightness"], abs=0.02)


def test_degrade_like_finds_the_closest_candidate_while_measuring_few_in_full(monkeypatch):
    """The lazy search picks what measuring every candidate in full would pick."""
    import shiftbench.explain.interventions as iv

    scale = {"sharpness": 1.0, "hf_ratio": 0.01, "blockiness": 0.1, "blur_anisotropy": 0.1, "noise": 0.01}
    spread = {**iv.MATCH_SPREAD, **scale}
    src = views(texture(0, angle=60))
    full = {n: optics(degrade(src.crop, n)) for n in iv.DEGRADATIONS}
    parts_read = []

    def counted(img):
        for part in optics_parts(img):
            parts_read.append(part)
            yield part

    monkeypatch.setattr(iv, "optics_parts", counted)
    for k, made in enumerate([cv2.GaussianBlur(texture(1, angle=60), (0, 0), 1.3),
                              degrade(texture(2, angle=60), "jpeg 10"),
                              degrade(texture(3, angle=60), "pixelate 0.35"), texture(4, angle=60)]):
        ref = {**measure(made), "blur_direction": 0.0}
        sharper = all(ref[c] >= full["none"][c] for c in ("sharpness", "hf_ratio"))
        names = [n for n in iv.DEGRADATIONS if not (sharper and n in iv.LOW_PASS)]
        want = min(names, key=lambda n: sum(((full[n][c] - ref[c]) / spread[c]) ** 2
                                            for c in iv.OPTICS_MATCHED if c in spread))
        parts_read.clear()
        _, how = degrade_like(src, ref, scale)
        assert how.split(" + ")[0] == want, k
        assert sum("blur_anisotropy" in p for p in parts_read) < len(names) / 2  # most stopped early


def test_degrade_like_matches_the_blur():
    sharp, blurred = texture(0, angle=60), cv2.GaussianBlur(texture(1, angle=60), (0, 0), 2.0)
    ref = {**measure(blurred), "blur_direction": 0.0}
    scale = {"sharpness": 1.0, "hf_ratio": 0.01, "blockiness": 0.1, "blur_anisotropy": 0.1, "noise": 0.01}
    out, how = degrade_like(views(sharp), ref, scale)
    assert how.split()[0] in ("blur", "downscale")
    got = measure(out.whole)["sharpness"]
    assert abs(got - ref["sharpness"]) < 0.35 * ref["sharpness"] < abs(measure(sharp)["sharpness"] - ref["sharpness"])


def test_degrade_like_finds_jpeg_blocking():
    src = texture(0, angle=60)
    ok, buf = cv2.imencode(".jpg", texture(1, angle=60), [cv2.IMWRITE_JPEG_QUALITY, 8])
    ref = {**measure(cv2.imdecode(buf, cv2.IMREAD_COLOR)), "blur_direction": 0.0}
    scale = {"sharpness": 1.0, "hf_ratio": 0.01, "blockiness": 0.05, "blur_anisotropy": 0.1, "noise": 0.01}
    assert degrade_like(views(src), ref, scale)[1].startswith("jpeg")


def test_degrade_like_reuses_the_known_optics_of_a_neighbour(monkeypatch):
    """A training image's candidate optics are measured once, and the choice does not change."""
    import shiftbench.explain.interventions as iv

    sharp, blurred = texture(0, angle=60), cv2.GaussianBlur(texture(1, angle=60), (0, 0), 2.0)
    ref = {**measure(blurred), "blur_direction": 30.0}
    scale = {"sharpness": 1.0, "hf_ratio": 0.01, "blockiness": 0.1, "blur_anisotropy": 0.1, "noise": 0.01}
    plain = degrade_like(views(sharp), ref, scale)
    known: dict = {}
    first = degrade_like(views(sharp), ref, scale, known)
    calls = []
    monkeypatch.setattr(iv, "optics_parts", lambda img: calls.append(1) or optics_parts(img))
    partly = sum(len(m) < len(iv.OPTICS_FIELDS) for m in known.values())  # the search stopped measuring them
    second = degrade_like(views(sharp), {**ref, "blur_direction": 120.0}, scale, known)
    assert first[1] == plain[1] and np.array_equal(first[0].whole, plain[0].whole)
    assert not any(k.startswith("motion") for k in known) and len(known["none"]) == len(iv.OPTICS_FIELDS)
    assert len(calls) <= sum(k.startswith("motion") for k in iv.DEGRADATIONS) + partly  # known ones not made again
    assert second[1] == degrade_like(views(sharp), {**ref, "blur_direction": 120.0}, scale)[1]


def test_degrade_like_does_not_low_pass_towards_a_sharper_image():
    """A reference sharper than the neighbour cannot be explained by blurring it: only blocky
    candidates (a nearest-neighbour resize, JPEG) are tried."""
    soft, sharp = cv2.GaussianBlur(texture(0, angle=60), (0, 0), 1.5), texture(1, angle=60)
    ref = {**measure(sharp), "blur_direction": 0.0}
    scale = {"sharpness": 1.0, "hf_ratio": 0.01, "blockiness": 0.1, "blur_anisotropy": 0.1, "noise": 0.01}
    known: dict = {}
    out, how = degrade_like(views(soft), ref, scale, known)
    assert set(known) == {"none", *BLOCKY}
    assert how.split()[0] in ("none", "jpeg", "pixelate")
    # the other way round, the full search runs and finds a blur
    assert degrade_like(views(sharp), {**measure(soft), "blur_direction": 0.0}, scale)[1].split()[0] in ("blur",
                                                                                                       "downscale")


def test_degrade_like_finds_a_nearest_neighbour_resize():
    """A texture shown at a third of its pixels, repeated (a resize by nearest neighbour), is
    matched by pixelating the neighbour, not by blurring it."""
    import shiftbench.explain.interventions as iv

    src, other = texture(0, angle=60), texture(1, angle=60)
    x = iv.degrade(other, "pixelate 0.35")
    scale = {"sharpness": 1.0, "hf_ratio": 0.01, "blockiness": 0.1, "blur_anisotropy": 0.1, "noise": 0.01}
    out, how = degrade_like(views(src), {**measure(x), "blur_direction": 0.0}, scale)
    assert how.startswith("pixelate"), how


@pytest.mark.parametrize("f", [0.35, 0.4])
def test_a_soft_scene_shown_by_repeated_pixels_is_told_from_blur(f):
    """A nearest-neighbour resize of a softer scene than the neighbour's: with steel's training
    spreads, sharpness and spectrum alike took it for a downscale; repeated pixels tell them apart."""
    scale = {"sharpness": 1.42, "hf_ratio": 0.063, "blockiness": 0.153, "blur_anisotropy": 0.142, "noise": 0.0174}
    soft = cv2.GaussianBlur(texture(1), (0, 0), 1.6)
    x = {**measure(degrade(soft, f"pixelate {f}")), "blur_direction": 0.0}
    assert degrade_like(views(texture(0)), x, scale)[1].startswith("pixelate")
    plain = {**measure(soft), "blur_direction": 0.0}
    assert not degrade_like(views(texture(0)), plain, scale)[1].startswith("pixelate")


def test_noise_is_added_with_the_colour_the_production_image_s_noise_has():
    """A monochrome camera's noise (or grey noise on a colour image) is the same in every channel: a
    counterfactual gets no colour speckle; a colour sensor's noise is drawn per channel."""
    import shiftbench.explain.interventions as iv

    grey, colour = texture(0), texture(0).copy()
    colour[..., 0] = np.clip(colour[..., 0].astype(int) + 20, 0, 255)
    noisy = iv._add_noise(grey, 12.0, grey=True)
    assert (noisy == noisy[..., :1]).all() and np.abs(noisy.astype(float) - grey).mean() > 5
    per_channel = iv._add_noise(colour, 12.0, grey=False)
    assert not (per_channel[..., 1] == per_channel[..., 2]).all()
    rng = np.random.default_rng(1)
    common = np.clip(colour + rng.normal(0, 12.0, colour.shape[:2] + (1,)), 0, 255).astype(np.uint8)
    assert iv.grey_noise(grey) and iv.grey_noise(common) and not iv.grey_noise(per_channel)


def test_every_named_degradation_can_be_made_and_others_are_refused():
    import shiftbench.explain.interventions as iv

    src = texture(0, angle=60)
    for name in iv.DEGRADATIONS:
        out = iv.degrade(src, name, 30.0)
        assert out.shape == src.shape and out.dtype == np.uint8
        assert (out is src) == (name == "none")
    with pytest.raises(ValueError, match="unknown degradation"):
        iv.degrade(src, "sharpen 2")


def test_channel_swap_is_offered_only_for_colour_images():
    grey = texture(0)
    colour = grey.copy()
    colour[..., 0] = 200
    assert "channels swapped" not in pipeline_faults(views(grey))
    assert np.array_equal(pipeline_faults(views(colour))["channels swapped"].whole, colour[..., ::-1])


def test_colour_dropped_is_offered_for_a_grey_image_against_colour_neighbours():
    grey = texture(0)
    colour = grey.copy()
    colour[..., 0] = 200
    assert "colour dropped (grey)" not in pipeline_faults(views(colour))  # the production image has colour
    assert "colour dropped (grey)" not in pipeline_faults(views(grey), grey=True)  # nothing to drop
    dropped = pipeline_faults(views(colour), grey=True)["colour dropped (grey)"].whole
    expected = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
    assert all(np.array_equal(dropped[..., c], expected) for c in range(3))


# ------------------------------------------------------------------ scoring with extra references

def test_score_with_an_exact_copy_as_reference_gives_distance_zero():
    rng = np.random.default_rng(0)
    train, x = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32) * 3
    sc = KNNScorer(k=1).fit(train)
    far = rng.normal(size=(3, 1, 8)).astype(np.float32) * 100
    assert np.allclose(sc.score_with(x, x[:, None, :]), 0, atol=1e-3)
    assert np.allclose(sc.score_with(x, far), sc.score(x)[0])  # a useless extra changes nothing
    fused = FusedKNNScorer([("a", 5), ("b", 3)], k=1, raw_views=("b",)).fit(train)
    s, _, _ = fused.score(x)
    with_copy = fused.score_with(x, x[:, None, :])
    assert (with_copy < s).all() and np.allclose(fused.score_with(x, far), s)


# ------------------------------------------------------------------ clusters

def _flagged(n_each: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_each):
        rows.append({"cause": "lighting", "brightness_p50": rng.normal(0.15, 0.02)})
        rows.append({"cause": "lighting", "brightness_p50": rng.normal(0.85, 0.02)})
        rows.append({"cause": "resolution+lighting", "sharpness": rng.normal(0.5, 0.05)})
        rows.append({"cause": "content"})
    t = pd.DataFrame(rows)
    for c in ["brightness_p50", "contrast", "illum_gradient", "sharpness", "hf_ratio", "blockiness",
              "blur_anisotropy"]:
        t[c] = t.get(c, pd.Series(np.nan, index=t.index)).fillna(0.5)
    t["contrast"], t["illum_gradient"] = 0.2, 0.01
    return t.assign(path=[f"{i}.png" for i in range(len(t))], confidence=0.9, share_lighting=0.5)


def test_clusters_follow_causes_and_modes_split_within():
    t = _flagged()
    center = {"brightness_p50": 0.5, "contrast": 0.2, "illum_gradient": 0.01, "sharpness": 2.0, "hf_ratio": 0.1,
              "blockiness": 1.0, "blur_anisotropy": 0.2}
    scale = {c: 0.1 for c in center}
    t["cluster"], t["mode"] = cluster_flagged(t, center, scale)
    # one cluster per primary cause (ids by size: lighting has 24, the others 12); dark and bright are two modes
    assert t["cluster"].nunique() == 3
    for cause in ["lighting", "resolution+lighting", "content"]:
        assert t.loc[t["cause"] == cause, "cluster"].nunique() == 1
    lit = t["cause"] == "lighting"
    assert (t.loc[lit, "cluster"] == 0).all() and (t.loc[~lit, "mode"] == 0).all()
    dark = t["brightness_p50"] < 0.5
    assert t.loc[lit & dark, "mode"].nunique() == 1 and t.loc[lit & ~dark, "mode"].nunique() == 1
    assert t.loc[lit & dark, "mode"].iloc[0] != t.loc[lit & ~dark, "mode"].iloc[0]
    cards = cluster_cards(t, np.random.default_rng(0).normal(size=(len(t), 4)), center)
    assert [c["size"] for c in cards] == sorted((c["size"] for c in cards), reverse=True)
    light = cards[0]
    assert light["cause"] == "lighting" and [m["size"] for m in light["modes"]] == [12, 12]
    dark_mode = next(m for m in light["modes"] if "below" in m["change"][0])
    assert dark_mode["change"][0].startswith("median brightness 70% below training")
    assert any(line.startswith(f"mode {dark_mode['mode']} (12 images): median brightness 70% below")
               for line in light["change"])
    assert "modes" not in cards[1] and len(light["medoids"]) == 3
    assert "taken_from_alike" not in light  # no cause_own column: nothing to count
    t["cause_own"] = t["cause"]
    t.loc[t.index[lit & dark][:2], "cause_own"] = "content"  # two dark images took the cause of alike ones
    cards = {c["cluster"]: c for c in cluster_cards(t, np.zeros((len(t), 4)), center)}
    assert cards[0]["taken_from_alike"] == 2
    assert sum(c["taken_from_alike"] for c in cards.values()) == 2


def test_a_unimodal_group_stays_one_mode():
    t = _flagged()
    t = t[(t["cause"] != "lighting") | (t["brightness_p50"] < 0.5)]
    center = {"brightness_p50": 0.5, "sharpness": 2.0}
    cluster, mode = cluster_flagged(t, center, {"brightness_p50": 0.1, "sharpness": 0.1})
    assert cluster.max() == 2 and mode.max() == 0


def test_describe_change_for_angle_and_content():
    t = pd.DataFrame({"rotation_deg": [18.0, 22.0, 30.0, 25.0], "share_angle": 0.8})
    assert "rotated +19 to +28 degrees" in describe_change(t, "angle", {})[0]
    assert "new parts" in describe_change(t, "content", {})[0]
    assert not any("tilted" in line for line in describe_change(t, "angle", {}))
    t["how_angle"] = ["stretch 1.25 along 45, rotate +18 (conf 0.40) zoom 1.00"] * 2 + ["rotate +30 (conf 0.5)"] * 2
    tilted = "foreshortened, as by a camera tilted against the surface, in 2 of 4 images"
    assert describe_change(t, "angle", {})[1] == tilted
    t["how_angle"] = ["shear -0.25 along 0"] * 2 + ["rotate +30 (conf 0.5)"] * 2  # (a part's shear)
    assert describe_change(t, "angle", {})[1] == tilted
    t["how_angle"] = ["moved away, zoom 0.80"] * 3 + ["rotate +30 (conf 0.5)"]
    assert describe_change(t, "angle", {})[1] == "the scene smaller, as from a camera moved away, in 3 of 4 images"


def test_describe_change_names_a_vignette_only_where_there_is_one():
    t = pd.DataFrame({"brightness_p50": [0.4] * 3, "contrast": [0.1] * 3, "illum_gradient": [0.01] * 3,
                      "vignetting": [0.35, 0.4, 0.45]})
    center = {"brightness_p50": 0.5, "contrast": 0.1, "illum_gradient": 0.01, "vignetting": 0.02}
    assert "vignetting: corners -40% against the centre (training -2%)" in describe_change(t, "lighting", center)
    assert not any("vignetting" in line for line in describe_change(t.assign(vignetting=0.05), "lighting", center))
    # parts in the middle of the frame: the radial term is the scene's, and darkening them moves it
    parts = {**center, "vignetting": 1.25}
    assert not any("vignetting" in line for line in describe_change(t.assign(vignetting=1.41), "lighting", parts))


def test_describe_change_for_rotations_both_ways():
    t = pd.DataFrame({"rotation_deg": [18.0, -22.0, 30.0, -25.0, 20.0, -28.0]})
    line = describe_change(t, "angle", {})[0]
    assert "both ways" in line and "50% counter-clockwise" in line and "median 24" in line


# ------------------------------------------------------------------ lighting must be undone as well as imitated

def _bank_and_image(bank_workspace):
    from shiftbench.bank import load_bank
    from shiftbench.images import read_image
    bank = load_bank(bank_workspace)
    paths = bank.table["path"].to_numpy()[bank.rows]
    return bank, read_image(Path(bank.meta["root"]) / paths[0])


def test_undoing_lighting_removes_a_relit_images_distance_but_not_new_contents(bank_workspace, lite0):
    """A darkened training image relit back is in distribution again; a new pattern given
    the training tone is not (the histogram was never what made it new)."""
    from shiftbench.explain.attribution import _embed, _undo_lighting
    bank, train_img = _bank_and_image(bank_workspace)
    conditions, scorer = bank.meta["conditions"], bank.scorer
    typical = float(np.median(scorer.calibration_.scores))
    checker = np.kron((np.indices((12, 12)).sum(0) % 2), np.ones((8, 8)))  # 96 x 96 squares
    new = np.repeat((60 + 30 * checker).astype(np.uint8)[..., None], 3, axis=2)
    dark = (train_img.astype(np.float32) * 0.45).astype(np.uint8)  # gain only: nothing clips
    undone = {}
    for name, x in [("dark", dark), ("new", new)]:
        score = float(scorer.score(_embed([views(x)], lite0, conditions))[0][0])
        assert score > np.quantile(scorer.calibration_.scores, 0.95)  # both out of distribution
        relit_back = _undo_lighting(views(x), [views(train_img)], scorer, lite0, conditions)
        undone[name] = max(score - relit_back, 0.0) / (score - typical)  # share of the distance removed
    assert undone["dark"] >= 0.8 and undone["new"] < 0.3, undone


def test_the_change_reported_is_the_counterfactual_that_explains_most(bank_workspace, lite0):
    """Where a cause has several counterfactuals, ``how_<cause>`` names the one that alone
    brings the image closest, not the first one made."""
    from shiftbench.explain import attribution as at
    bank, train_img = _bank_and_image(bank_workspace)
    conditions, scorer = bank.meta["conditions"], bank.scorer
    x = rotate(train_img, 25)
    feats = at._embed([views(x)], lite0, conditions)
    score = float(scorer.score(feats)[0][0])
    made = [("angle", views(rotate(train_img, 25, 1.3)), "rotate +25 (conf 0.50) zoom 1.30"),
            ("angle", views(x), "rotate +25 (conf 0.50) zoom 1.00")]  # the second is x itself
    made = (made, [at._measure(v) for _, v, _ in made], 25.0)
    row = at.attribute_one(views(x), feats[0], measure(x), score, [views(train_img)], scorer, lite0, conditions,
                           made=made)
    assert row["how_angle"].endswith("zoom 1.00") and row["share_angle"] == 1.0
    made[0].reverse()
    assert at.attribute_one(views(x), feats[0], measure(x), score, [views(train_img)], scorer, lite0, conditions,
                            made=(made[0], made[1][::-1], 25.0))["how_angle"].endswith("zoom 1.00")


def test_a_colour_image_against_grey_training_is_a_pipeline_fault(bank_workspace, lite0):
    """Colour where every training image is grey: no neighbour can be given colour, so the image is
    made grey, and that explains it (the synthetic training images are grey)."""
    from shiftbench.explain import attribution as at
    bank, train_img = _bank_and_image(bank_workspace)
    conditions, scorer = bank.meta["conditions"], bank.scorer
    # the same luma with colour that varies across the image (a colour camera; not a cast, which relighting matches)
    y = cv2.cvtColor(train_img, cv2.COLOR_RGB2GRAY)
    rng = np.random.default_rng(0)
    chroma = [np.clip(128 + 40 * cv2.resize(rng.normal(size=(4, 4)), y.shape[::-1]), 0, 255).astype(np.uint8)
              for _ in range(2)]
    tinted = cv2.cvtColor(np.dstack([y, *chroma]), cv2.COLOR_YCrCb2RGB)
    feats = at._embed([views(tinted)], lite0, conditions)
    score = float(scorer.score(feats)[0][0])
    assert score > np.quantile(scorer.calibration_.scores, 0.95)
    row = at.attribute_one(views(tinted), feats[0], measure(tinted), score, [views(train_img)], scorer, lite0,
                           conditions)
    assert row["cause"].startswith("pipeline") and row["how_pipeline"] == "colour where training is grey"
    assert row["share_pipeline"] >= 0.8


def test_lighting_that_cannot_be_undone_is_not_the_cause_unless_the_image_clips(bank_workspace, lite0, monkeypatch):
    from shiftbench.explain import attribution as at
    bank, train_img = _bank_and_image(bank_workspace)
    conditions, scorer = bank.meta["conditions"], bank.scorer
    dark = (train_img.astype(np.float32) * 0.45).astype(np.uint8)
    feats = at._embed([views(dark)], lite0, conditions)
    score = float(scorer.score(feats)[0][0])
    args = (views(dark), feats[0], measure(dark), score, [views(train_img)], scorer, lite0, conditions)
    lit = at.attribute_one(*args)
    assert lit["cause"].startswith("lighting")
    monkeypatch.setattr(at, "_undo_lighting", lambda *a: score)  # as if relighting back changed nothing
    row = at.attribute_one(*args)
    assert "lighting" not in row["cause"] and row["share_lighting"] >= at.MIN_SHARE and row["undo_lighting"] == 0
    # the residual is what the changes left standing explain: relighting no longer counts
    assert row["residual_score"] > lit["residual_score"] and row["residual_p"] <= lit["residual_p"]
    clipped = {**measure(dark), "shadows_clipped": 0.2}  # black-clipped tones cannot be restored: not asked
    row = at.attribute_one(views(dark), feats[0], clipped, score, [views(train_img)], scorer, lite0, conditions)
    assert row["cause"].startswith("lighting") and np.isnan(row["undo_lighting"])


def test_a_relit_image_at_a_pixel_size_no_training_image_has_is_not_lighting(bank_workspace, lite0):
    """Lighting (and angle) keep the camera's pixel grid: an image at another size that only a
    relighting explains is another camera's or line's, so it is content."""
    from shiftbench.explain import attribution as at
    bank, train_img = _bank_and_image(bank_workspace)
    conditions, scorer = bank.meta["conditions"], bank.scorer
    dark = (train_img.astype(np.float32) * 0.45).astype(np.uint8)
    feats = at._embed([views(dark)], lite0, conditions)
    args = (views(dark), feats[0], measure(dark), float(scorer.score(feats)[0][0]), [views(train_img)], scorer,
            lite0, conditions)
    assert at.attribute_one(*args)["cause"].startswith("lighting")
    row = at.attribute_one(*args, new_size=True)
    assert row["cause"] == "content" and row["share_lighting"] >= at.MIN_SHARE  # the share is still reported
    assert np.isnan(row["undo_lighting"])  # not asked: lighting cannot be named anyway


def test_at_a_new_pixel_size_no_neighbour_is_degraded_on_its_own_grid(bank_workspace):
    """A blur or noise of a training image keeps its pixel grid: for a (noisier) image at a size no
    training image has, the neighbours are not degraded (only resized, where it has fewer pixels)."""
    from shiftbench.explain import attribution as at
    bank, train_img = _bank_and_image(bank_workspace)
    scale = dict(zip(bank.meta["conditions"]["columns"], bank.meta["conditions"]["scale"]))
    h, w = train_img.shape[:2]
    big = cv2.resize(train_img, (w * 3 // 2, h * 3 // 2), interpolation=cv2.INTER_CUBIC)
    noisy = np.clip(big + np.random.default_rng(0).normal(0, 12, big.shape), 0, 255).astype(np.uint8)
    same_grid, _ = at._counterfactuals(views(noisy), measure(noisy), [views(train_img)], scale)
    assert any("noise" in how for _, how in same_grid["resolution"])  # what the same grid would get
    new_grid, _ = at._counterfactuals(views(noisy), measure(noisy), [views(train_img)], scale, new_size=True)
    assert new_grid["resolution"] == [] and new_grid["angle"] and new_grid["lighting"]


def test_an_image_with_fewer_pixels_is_explained_by_a_lower_resolution_camera(bank_workspace, lite0, monkeypatch):
    """Production at half the training's pixel size: the neighbours resized to it are the
    counterfactual (the same view through a lower-resolution camera), and it explains the image."""
    from shiftbench.explain import attribution as at
    bank, train_img = _bank_and_image(bank_workspace)
    conditions, scorer = bank.meta["conditions"], bank.scorer
    h, w = train_img.shape[:2]
    small = cv2.resize(train_img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    feats = at._embed([views(small)], lite0, conditions)
    score = float(scorer.score(feats)[0][0])
    row = at.attribute_one(views(small), feats[0], measure(small), score, [views(train_img)], scorer, lite0,
                           conditions, new_size=True)
    assert row["cause"] == "resolution" and row["how_resolution"] == f"resized to {w // 2}x{h // 2}"
    # this bank calibrates on 24 images: no p-value is below 1/25, so the bar is raised above it
    monkeypatch.setattr(at, "STRICT_MIN_P", 0.05)
    row = at.attribute_one(views(small), feats[0], measure(small), score, [views(train_img)], scorer, lite0,
                           conditions, new_size=True)
    assert row["cause"] == "resolution" and row["how_resolution"].startswith("resized")
    checker = np.kron((np.indices((6, 6)).sum(0) % 2), np.ones((8, 8)))  # another line's parts, as small
    other = np.repeat((60 + 30 * checker).astype(np.uint8)[..., None], 3, axis=2)
    feats = at._embed([views(other)], lite0, conditions)
    row = at.attribute_one(views(other), feats[0], measure(other), float(scorer.score(feats)[0][0]),
                           [views(train_img)], scorer, lite0, conditions, new_size=True)
    assert row["cause"] == "content" and not row["how_resolution"].startswith("resized")
    scale = dict(zip(conditions["columns"], conditions["scale"]))
    for same_or_larger in (train_img, cv2.resize(train_img, (w * 2, h * 2))):
        out, _ = at._counterfactuals(views(same_or_larger), measure(same_or_larger), [views(train_img)], scale)
        assert not any(how.startswith("resized") for _, how in out["resolution"])


def test_each_neighbour_is_seen_through_its_best_matching_stretch():
    from shiftbench.explain.attribution import _counterfactuals
    x = views(rotate(stretch(hatch(1), 1.25, 45), 10))
    neighbours = [views(texture(3)), views(hatch(0)), views(hatch(2))]
    scale = {"sharpness": 1.0, "hf_ratio": 0.01, "blockiness": 0.1, "blur_anisotropy": 0.1, "noise": 0.01}
    out, _ = _counterfactuals(x, measure(x.whole), neighbours, scale)
    got = [v for v, how in out["angle"] if how.startswith("stretch")]
    fits = [tilted_pose(n, x, estimate_pose(n, x)) for n in neighbours]
    want = [apply_pose(n, f[0])[0] for n, f in zip(neighbours, fits) if f is not None]
    assert len(want) >= 2 and len(got) == len(want)
    assert all(np.array_equal(g.whole, w.whole) for g, w in zip(got, want))


def test_a_stretched_camera_explains_a_tilt_only_where_it_brings_the_image_into_distribution_or_most_of_the_way(
        bank_workspace, lite0, monkeypatch):
    from shiftbench.explain import attribution as at
    bank, train_img = _bank_and_image(bank_workspace)
    conditions, scorer = bank.meta["conditions"], bank.scorer
    tilted = stretch(train_img, 1.25, 45)
    feats = at._embed([views(tilted)], lite0, conditions)
    args = (views(tilted), feats[0], measure(tilted), float(scorer.score(feats)[0][0]), [views(train_img)], scorer,
            lite0, conditions)
    # this bank calibrates on 24 images: no p-value is below 1/25, so the bar is raised above it
    monkeypatch.setattr(at, "STRICT_MIN_P", 0.05)
    row = at.attribute_one(*args)
    assert row["cause"] == "angle" and row["share_angle"] > 0.9
    assert row["how_angle"].startswith("stretch 1.25 along 45, rotate -0")
    monkeypatch.setattr(at, "STRICT_MIN_P", 1.01)  # no image can reach it: only the share bar admits the stretch
    row = at.attribute_one(*args)
    assert row["how_angle"].startswith("stretch") and row["share_angle"] > 0.9  # it explains over 0.7
    monkeypatch.setattr(at, "STRICT_SHARE", np.inf)  # neither bar can be reached: the stretch never counts
    row = at.attribute_one(*args)
    assert not row["how_angle"].startswith("stretch") and row["share_angle"] < 0.5


def test_a_camera_moved_away_explains_a_zoomed_out_image_where_it_brings_it_into_distribution(bank_workspace, lite0,
                                                                                              monkeypatch):
    from shiftbench.explain import attribution as at
    from shiftbench.explain.pose import _zoom
    bank, train_img = _bank_and_image(bank_workspace)
    conditions, scorer = bank.meta["conditions"], bank.scorer
    away = _zoom(train_img, at.ZOOM_OUT)
    feats = at._embed([views(away)], lite0, conditions)
    args = (views(away), feats[0], measure(away), float(scorer.score(feats)[0][0]), [views(train_img)], scorer,
            lite0, conditions)
    monkeypatch.setattr(at, "STRICT_MIN_P", 0.05)  # as above: this bank's p-values are at least 1/25
    row = at.attribute_one(*args)
    assert row["cause"] == "angle" and row["share_angle"] > 0.9 and row["how_angle"] == "moved away, zoom 0.80"
    monkeypatch.setattr(at, "STRICT_MIN_P", 1.01)
    monkeypatch.setattr(at, "STRICT_SHARE", np.inf)  # the zoom-out never counts
    row = at.attribute_one(*args)
    assert not row["how_angle"].startswith("moved away") and row["share_angle"] < 0.5


def test_new_pixel_size_is_outside_the_training_range():
    train_h, train_w = np.array([128, 128, 128]), np.array([128, 128, 128])
    got = new_pixel_size([128, 200, 128, 64], [128, 200, 130, 128], train_h, train_w)
    assert list(got) == [False, True, True, True]
    many_h, many_w = np.array([100, 300, 200]), np.array([150, 400, 90])  # a training set of many sizes
    assert list(new_pixel_size([250, 250, 99], [200, 401, 200], many_h, many_w)) == [False, True, True]
    assert not new_pixel_size([10], [10], [np.nan], [np.nan]).any()  # no readable training size


def test_describe_change_names_a_new_pixel_size():
    t = pd.DataFrame({"width": [200, 200, 200], "height": [200, 200, 200], "share_lighting": 0.3,
                      "new_pixel_size": [True, True, False]})
    lines = describe_change(t, "content", {"width": 128.0, "height": 128.0})
    assert "pixel size no training image has (200x200, training 128x128)" in lines[-1]
    assert len(describe_change(t.assign(new_pixel_size=False), "content", {})) == 1
    # a member at the training size is not listed among the new sizes
    mixed = t.assign(width=[200, 200, 128], height=[200, 200, 128])
    assert "(200x200, training 128x128)" in describe_change(mixed, "content", {"width": 128.0, "height": 128.0})[-1]
    # squashed both ways: the sizes the images have, not a median of widths beside one of heights
    both = t.assign(width=[2000, 16, 2000], height=[16, 2000, 16], new_pixel_size=True)
    assert "(2000x16 (2), 16x2000 (1), training 128x128)" in describe_change(both, "content", {"width": 128.0,
                                                                                              "height": 128.0})[-1]
    many = pd.DataFrame({"width": [300, 300, 310, 320, 330], "height": 200, "share_lighting": 0.3,
                         "new_pixel_size": True})
    assert "(4 sizes, most often 300x200 (2 of 5))" in describe_change(many, "content", {})[-1]


# ------------------------------------------------------------------ agreement among alike images

def test_an_isolated_misreading_takes_the_cause_of_its_alike_images():
    rng = np.random.default_rng(0)
    dark = rng.normal([-3, 0, 0], 0.3, (12, 3))  # a darker station: 12 alike images
    tilted = rng.normal([0, 3, 0], 0.3, (12, 3))  # a tilted one
    conditions = np.vstack([dark, tilted])
    causes = np.array(["lighting"] * 12 + ["angle"] * 12, dtype=object)
    causes[3], causes[15] = "content", "resolution+angle"  # one misreading in each
    shares = np.zeros((24, 4))
    agreed, agreement = agree_with_neighbours(causes, conditions, shares)
    assert agreed[3] == "lighting" and agreed[15] == "angle"
    assert list(agreed[:3]) == ["lighting"] * 3 and agreed[16] == "angle"
    assert agreement[3] == pytest.approx(6 / 7) and agreement.min() >= 6 / 7


def test_a_rotated_image_among_blurred_ones_stays_angle_but_a_blurred_one_among_rotated_ones_turns():
    """A warp interpolates: a rotated image looks a little blurred and sits among blurred images,
    whose vote does not take its angle away; the reverse vote still applies."""
    rng = np.random.default_rng(3)
    conditions = np.vstack([rng.normal([-3, 0, 0], 0.3, (12, 3)), rng.normal([0, 3, 0], 0.3, (12, 3))])
    causes = np.array(["resolution"] * 12 + ["angle"] * 12, dtype=object)
    causes[3], causes[15] = "angle", "resolution"
    agreed, agreement = agree_with_neighbours(causes, conditions, np.zeros((24, 4)))
    assert agreed[3] == "angle" and agreement[3] == pytest.approx(1 / 7)  # kept, against 6 of 7
    assert agreed[15] == "angle"


def test_a_small_group_of_alike_images_keeps_its_own_cause():
    """Four alike images (a majority of any 7) keep their cause among many of another."""
    rng = np.random.default_rng(1)
    conditions = np.vstack([rng.normal(0, 1.0, (30, 3)), rng.normal([0.5, 0, 0], 0.05, (4, 3))])
    causes = np.array(["content"] * 30 + ["lighting"] * 4, dtype=object)
    agreed, _ = agree_with_neighbours(causes, conditions, np.zeros((34, 4)))
    assert list(agreed[30:]) == ["lighting"] * 4


def test_an_image_unlike_any_other_flagged_one_keeps_its_own_cause():
    """A file of noise beside a tilted station is nearest to the tilted images, but far from all of them:
    they are not alike, so they do not vote it into the angle cluster."""
    rng = np.random.default_rng(4)
    tilted = rng.normal([0, 3, 0], 0.3, (12, 3))
    conditions = np.vstack([tilted, [[0, 3, 12]], [[0, 3, 0.2]]])  # far away / inside the station
    causes = np.array(["angle"] * 12 + ["resolution", "resolution"], dtype=object)
    agreed, _ = agree_with_neighbours(causes, conditions, np.zeros((14, 4)))
    assert agreed[12] == "resolution" and agreed[13] == "angle"


def test_fewer_flagged_images_than_a_neighbourhood_keep_their_causes():
    causes = np.array(["lighting", "lighting", "lighting", "angle"], dtype=object)
    agreed, agreement = agree_with_neighbours(causes, np.zeros((4, 3)), np.zeros((4, 4)))
    assert list(agreed) == list(causes) and agreement[3] == pytest.approx(0.25)


def test_images_at_a_new_pixel_size_vote_only_among_themselves():
    """Another line's images can look like a relit station's in the measurements; they are
    not alike, so neither group takes the other's cause."""
    rng = np.random.default_rng(2)
    conditions = rng.normal(0, 0.3, (28, 3))  # all alike in their measurements
    causes = np.array(["lighting"] * 20 + ["content"] * 8, dtype=object)
    causes[27] = "lighting"  # one of another line's images misread as relit
    new_size = np.arange(28) >= 20
    mixed, _ = agree_with_neighbours(causes, conditions, np.zeros((28, 4)))
    assert (mixed[20:] == "lighting").sum() > 1  # without groups the majority swallows them
    agreed, agreement = agree_with_neighbours(causes, conditions, np.zeros((28, 4)), groups=new_size)
    assert list(agreed[:20]) == ["lighting"] * 20 and list(agreed[20:]) == ["content"] * 8  # voted within
    assert agreement[20:].min() >= 6 / 7 and agreement[:20].min() == 1.0


def test_explained_share_leaves_out_lighting_that_relighting_did_not_undo():
    from shiftbench.explain import explained_share
    t = pd.DataFrame({"share_lighting": [0.84, 0.84, 0.84], "share_angle": [0.1, 0.1, 0.1],
                      "undo_lighting": [0.26, 0.5, np.nan]})
    assert explained_share(t).tolist() == [0.1, 0.84, 0.84]  # not undone / undone / not asked


def test_a_colour_cast_is_told_from_colour_that_varies_across_the_image():
    from shiftbench.explain.interventions import is_cast
    grey = texture(0)
    cast = np.clip(grey.astype(np.float32) * [1.2, 1.0, 0.75] + [5, 0, 0], 0, 255).astype(np.uint8)  # tinted light
    assert is_cast(cast) and is_cast(grey)
    y = grey[..., 0]
    cr = np.clip(128 + 40 * cv2.resize(np.random.default_rng(0).normal(size=(4, 4)), y.shape[::-1]), 0, 255)
    parts = cv2.cvtColor(np.dstack([y, cr.astype(np.uint8), np.full_like(y, 128)]), cv2.COLOR_YCrCb2RGB)
    assert not is_cast(parts)  # red here, green there: no tone curve per channel greys it


def test_flipped_read_outs_are_pipeline_faults():
    img = texture(0, angle=30)
    faults = pipeline_faults(views(img))
    assert np.array_equal(faults["mirrored"].whole, img[:, ::-1])
    assert np.array_equal(faults["upside down"].whole, img[::-1])


def test_a_squashed_image_is_a_wrong_resize_in_the_pipeline(bank_workspace, lite0):
    """A training image resized to another width-to-height ratio (half its height): the nearest
    neighbour squashed the same way explains it as a pipeline fault, not as a lower-resolution camera."""
    from shiftbench.explain import attribution as at
    bank, train_img = _bank_and_image(bank_workspace)
    conditions, scorer = bank.meta["conditions"], bank.scorer
    h, w = train_img.shape[:2]
    flat = cv2.resize(train_img, (w, h // 4), interpolation=cv2.INTER_AREA)
    feats = at._embed([views(flat)], lite0, conditions)
    score = float(scorer.score(feats)[0][0])
    assert score > np.quantile(scorer.calibration_.scores, 0.95)
    row = at.attribute_one(views(flat), feats[0], measure(flat), score, [views(train_img)], scorer, lite0, conditions,
                           new_size=True)
    assert row["cause"] == "pipeline" and row["how_pipeline"] == f"resized to {w}x{h // 4} (aspect ratio changed)"
    assert row["share_pipeline"] >= at.STRICT_SHARE and row["share_resolution"] == 0.0
    assert at.aspect_changed((h // 4, w), (h, w)) and not at.aspect_changed((h // 2, w // 2), (h, w))
    assert not at.aspect_changed((100, 105), (100, 100))  # within the tolerance: the same camera's crop


def test_a_card_names_uneven_light_relative_to_the_exposure():
    """A dim side light has a small absolute gradient (0.08 at brightness 0.1): the card judged it in
    absolute units and said nothing, while the collection plan, relative to the exposure, said "falling off"."""
    members = pd.DataFrame({"brightness": [0.10, 0.11, 0.09], "brightness_p50": [0.1, 0.1, 0.1],
                            "contrast": [0.05, 0.05, 0.05], "illum_gradient": [0.08, 0.09, 0.07]})
    center = {"brightness": 0.5, "brightness_p50": 0.5, "contrast": 0.1, "illum_gradient": 0.05}
    lines = describe_change(members, "lighting", center)
    assert any(line.startswith("uneven light: brightness changes by 80% of its mean") for line in lines), lines
    even = describe_change(members.assign(illum_gradient=0.02), "lighting", center)
    assert not any("uneven" in line for line in even)


def test_describe_change_for_resolution_names_noise_and_the_closest_degradation():
    center = {"sharpness": 1.0, "hf_ratio": 0.05, "blockiness": 1.2, "blur_anisotropy": 0.1, "noise": 0.004}
    noisy = pd.DataFrame({"sharpness": 12.0, "hf_ratio": 0.5, "blockiness": 1.0, "blur_anisotropy": 0.1,
                          "noise": [0.05, 0.06, 0.07], "how_resolution": "none + noise"})
    lines = describe_change(noisy, "resolution", center)
    assert "noise 15.0x training's (sigma 0.06 vs 0.004)" in lines
    assert lines[-1] == "closest degradation of the nearest training images: added noise (3 of 3)"
    # blocks with hard edges: a nearest-neighbour upscale by 2 jumps at 8-pixel boundaries as JPEG does
    blocky = pd.DataFrame({"sharpness": 0.6, "hf_ratio": 0.04, "blockiness": 2.3, "blur_anisotropy": 0.1,
                           "noise": 0.004, "how_resolution": ["pixelate 0.5", "pixelate 0.5", "jpeg 10", "none"]})
    lines = describe_change(blocky, "resolution", center)
    assert not any("JPEG blocking" in line for line in lines) and not any(line.startswith("noise") for line in lines)
    assert lines[-1] == ("closest degradation of the nearest training images: nearest-neighbour resize (2 of 4), "
                         "JPEG compression (1 of 4)")
    blocky["how_resolution"] = "jpeg 10"
    assert "JPEG blocking 2.30 (training 1.20)" in describe_change(blocky, "resolution", center)
    assert not any("closest" in line for line in describe_change(blocky.drop(columns="how_resolution"),
                                                                 "resolution", center))
