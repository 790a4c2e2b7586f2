"""Build a domain-shift benchmark from the real steel images in ``../shared/data``.

    python scripts/steel_bench.py OUT_DIR [--data ../shared/data] [--seed 0]

* ``OUT_DIR/train/<class>/``: half of NEU-DET (150 images per class), the lab set;
* ``OUT_DIR/prod/``: a flat folder of PNGs with opaque names:
  - ``none``: held-out NEU images, unshifted (50 per class);
  - ``lighting``, ``angle``, ``resolution``: other held-out NEU images shifted with
    albumentations, several variants per family, strength drawn at random per
    image and recorded in ``params``;
  - ``content``: X-SDD images (another plant, another camera, other defects).
* ``OUT_DIR/truth.csv``: ``file,family,variant,params,source_file,label``, the
  ground truth that ``../shared/eval/score.py`` reads.

Every image is written as PNG (lossless), clean ones included, so the file
format does not give the family away. Same seed, same benchmark.

``--line xsdd`` swaps the lines: half of each X-SDD class trains, held-out X-SDD images
are shown clean and shifted, and NEU images are the other line (content).

``--line LAB:OTHER`` takes any two data sets laid out like those (``--data``/NAME/images/<class>/),
e.g. procedurally rendered colour parts (``python datasets/factory.py``) against X-SDD steel:
images of another kind than steel, with the same shifts (half of each class trains).

``--variants unseen`` shifts with other transformations of each family (colour cast, vignette,
harsher contrast; camera moved away, shear, turned and closer; sensor noise, defocus, nearest-
neighbour resize): none of them was used to tune attribution.

``--content-size train`` resizes the other line's images to the lab line's pixel size
(``cv2.INTER_AREA`` down, ``INTER_CUBIC`` up), as a plant whose pipeline resizes every
camera's images to the model's size would: then their pixel size tells nothing. The
content variant is named ``<line>@<w>x<h>``.

``--mosaic K`` builds it from larger images with native detail instead (a factory
camera gives more than 200 px; upsampling would give no detail at the pixel scale):
K x K mosaics of same-class NEU images (K x 200 px) and (K + 1) x (K + 1) mosaics of
X-SDD images, each tile used once, so there are K^2 times fewer images per class
(training, clean and source counts are divided by K^2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REFLECT = cv2.BORDER_REFLECT_101


def _draws(rng: np.random.Generator):
    """``u(lo, hi)``, a uniform float, and ``sign()``, -1.0 or 1.0, drawn from ``rng``."""
    return (lambda lo, hi: float(rng.uniform(lo, hi))), (lambda: float(rng.choice([-1.0, 1.0])))


def _variants(rng: np.random.Generator, strength: float = 1.0) -> dict[str, dict]:
    """family -> variant -> function(rng) returning (albumentations transform, params).

    ``strength`` scales every change from the identity (brightness and contrast
    offsets, log-gamma, degrees, perspective, shear, log-zoom, log-downscale, blur
    sigma, motion kernel, JPEG quality divided); 1 is the default benchmark.
    """
    k = float(strength)
    u, sign = _draws(rng)

    def dark():
        b = max(k * u(-0.45, -0.25), -0.9)
        return A.RandomBrightnessContrast((b, b), (0, 0), p=1), {"brightness": b}

    def bright():
        b = min(k * u(0.25, 0.45), 0.9)
        return A.RandomBrightnessContrast((b, b), (0, 0), p=1), {"brightness": b}

    def gamma():
        g = u(35, 55) if rng.random() < 0.5 else u(180, 260)
        g = 100 * (g / 100) ** k if k != 1 else g  # (the default benchmark's values, bit for bit)
        return A.RandomGamma((g, g), p=1), {"gamma": g / 100}

    def low_contrast():
        c = max(k * u(-0.65, -0.45), -0.9)
        return A.RandomBrightnessContrast((0, 0), (c, c), p=1), {"contrast": c}

    def uneven():
        i, a = min(k * u(0.12, 0.2), 0.2), u(0, 360)  # 0.2: albumentations' strongest
        return A.Illumination(mode="linear", intensity_range=(i, i), effect_type="both",
                              angle_range=(a, a), p=1), {"intensity": i, "angle": a}

    def rotate():
        d = sign() * k * u(8, 30)
        return A.Rotate((d, d), border_mode=REFLECT, p=1), {"degrees": d}

    def perspective():
        s = k * u(0.07, 0.13)
        return A.Perspective((s, s), border_mode=REFLECT, p=1), {"scale": s}

    def affine():
        r, sh, z = sign() * k * u(4, 12), sign() * k * u(6, 14), u(1.15, 1.4) ** k
        return A.Affine(scale=(z, z), rotate=(r, r), shear=(sh, sh), border_mode=REFLECT, p=1), \
            {"rotate": r, "shear": sh, "zoom": z}

    def downscale():
        s = u(0.25, 0.5) ** k
        return A.Downscale((s, s), interpolation_pair={"downscale": cv2.INTER_AREA,
                                                       "upscale": cv2.INTER_LINEAR}, p=1), {"scale": s}

    def blur():
        s = k * u(1.2, 2.5)
        return A.GaussianBlur(sigma_limit=(s, s), p=1), {"sigma": s}

    def jpeg():
        q = max(1, int(rng.integers(5, 21) / k))
        return A.ImageCompression(quality_range=(q, q), p=1), {"quality": q}

    def motion():
        n = int(k * rng.choice([9, 11, 13])) // 2 * 2 + 1
        return A.MotionBlur(blur_limit=(n, n), p=1), {"kernel": n}

    return {"lighting": {"dark": dark, "bright": bright, "gamma": gamma, "low_contrast": low_contrast,
                         "uneven": uneven},
            "angle": {"rotate": rotate, "perspective": perspective, "affine": affine},
            "resolution": {"downscale": downscale, "blur": blur, "jpeg": jpeg, "motion_blur": motion}}


def _unseen_variants(rng: np.random.Generator, strength: float = 1.0) -> dict[str, dict]:
    """Other shifts of the same families, none of which attribution was tuned on (``--variants
    unseen``): a warm or cool colour cast, a vignette and a harsher tone curve; a camera moved
    away, a pure shear and a turned camera moved closer; sensor noise, a defocused lens and a
    nearest-neighbour resize. ``strength`` as in :func:`_variants`."""
    k = float(strength)
    u, sign = _draws(rng)

    def cast():
        c = sign() * k * u(15, 30)  # warm (red up, blue down) or cool
        return A.RGBShift((c, c), (0, 0), (-c, -c), p=1), {"red_minus_blue": 2 * c}

    def vignette():  # albumentations' Illumination stops at 0.2: darker corners drawn here
        i = min(k * u(0.3, 0.5), 0.9)

        def darken(img, **_):
            h, w = img.shape[:2]
            y, x = np.ogrid[-1:1:h * 1j, -1:1:w * 1j]
            gain = 1 - i * (x * x + y * y) / 2  # 1 in the centre, 1 - i in the corners
            return np.clip(img * gain[..., None], 0, 255).astype(np.uint8)
        return A.Lambda(image=darken, p=1), {"intensity": i}

    def tone_curve():
        c = min(k * u(0.35, 0.6), 0.9)
        return A.RandomBrightnessContrast((0, 0), (c, c), p=1), {"contrast": c}

    def zoom_out():
        z = u(0.72, 0.85) ** k
        return A.Affine(scale=(z, z), border_mode=REFLECT, p=1), {"zoom": z}

    def shear():
        sh = sign() * k * u(10, 18)
        return A.Affine(shear={"x": (sh, sh), "y": (0, 0)}, border_mode=REFLECT, p=1), {"shear_x": sh}

    def turn_closer():
        r, z = sign() * k * u(6, 15), u(1.1, 1.25) ** k
        return A.Affine(rotate=(r, r), scale=(z, z), border_mode=REFLECT, p=1), {"rotate": r, "zoom": z}

    def noise():
        sd = min(k * u(0.04, 0.08), 0.5)
        return A.GaussNoise(std_range=(sd, sd), per_channel=False, p=1), {"std": sd}

    def defocus():
        r = max(1, round(k * u(2.5, 4.5)))
        return A.Defocus(radius=(r, r), alias_blur=(0.1, 0.1), p=1), {"radius": r}

    def nearest():
        s = u(0.3, 0.5) ** k
        return A.Downscale((s, s), interpolation_pair={"downscale": cv2.INTER_NEAREST,
                                                       "upscale": cv2.INTER_NEAREST}, p=1), {"scale": s}

    return {"lighting": {"cast": cast, "vignette": vignette, "tone_curve": tone_curve},
            "angle": {"zoom_out": zoom_out, "shear": shear, "turn_closer": turn_closer},
            "resolution": {"noise": noise, "defocus": defocus, "nearest": nearest}}


VARIANTS = {"default": _variants, "unseen": _unseen_variants}


def _images(folder: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".png", ".bmp"))
            for d in sorted(folder.iterdir()) if d.is_dir()}


def _name(seed: int, i: int) -> str:
    return hashlib.blake2b(f"{seed}-{i}".encode(), digest_size=6).hexdigest() + ".png"


LINES = {"neu": ("neu_det", "x_sdd"), "xsdd": ("x_sdd", "neu_det")}  # lab line, another line (content)


def line_sets(line: str) -> tuple[str, str]:
    """(lab, other) data set names of ``line``: a key of :data:`LINES` or ``LAB:OTHER``."""
    return LINES[line] if line in LINES else tuple(line.split(":", 1))


def build(data: Path, out: Path, seed: int = 0, n_train: int = 150, n_clean: int = 50,
          n_shift: int = 200, n_content: int = 200, strength: float = 1.0, line: str = "neu",
          content_size: str = "native", variants: str = "default") -> Path:
    """Write the benchmark into ``out`` (replaced if present); see the module docstring and
    :func:`_variants` for ``strength``. ``line``: which data set is the lab's (:data:`LINES`);
    ``n_train`` 0 takes half of each class (X-SDD's classes hold 63-397 images); ``content_size``
    ``train`` resizes the other line's images to the first training image's size; ``variants``: the
    shifts (:data:`VARIANTS`)."""
    rng = np.random.default_rng(seed)
    lab, other = (_images(data / name / "images") for name in line_sets(line))
    if out.exists():
        shutil.rmtree(out)
    (out / "prod").mkdir(parents=True)
    sources = []  # held-out lab images available for production
    for cls, files in lab.items():
        files = [files[i] for i in rng.permutation(len(files))]
        (out / "train" / cls).mkdir(parents=True)
        take = n_train or len(files) // 2
        for f in files[:take]:
            shutil.copyfile(f, out / "train" / cls / f.name)
        sources += [(cls, f) for f in files[take:]]
    sources = [sources[i] for i in rng.permutation(len(sources))]
    rows, counter = [], 0

    def put(img_rgb: np.ndarray, family, variant, params, src: Path, label):
        nonlocal counter
        name = _name(seed, counter)
        counter += 1
        cv2.imwrite(str(out / "prod" / name), cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
        rows.append({"file": name, "family": family, "variant": variant, "params": json.dumps(params),
                     "source_file": str(src.relative_to(data)), "label": label})

    def load(p: Path) -> np.ndarray:
        return cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    per_class_clean: dict[str, int] = {}
    pool = []
    for cls, f in sources:
        if per_class_clean.get(cls, 0) < n_clean:
            per_class_clean[cls] = per_class_clean.get(cls, 0) + 1
            put(load(f), "none", "none", {}, f, cls)
        else:
            pool.append((cls, f))
    shifts = VARIANTS[variants](rng, strength)
    for family, fam_variants in shifts.items():
        names = list(fam_variants)
        for j in range(n_shift):
            cls, f = pool[(j + 997 * list(shifts).index(family)) % len(pool)]
            variant = names[j % len(names)]
            t, params = fam_variants[variant]()
            t.set_random_seed(int(rng.integers(1 << 31)))
            put(t(image=load(f))["image"], family, variant, params, f, cls)
    content = [(cls, f) for cls, files in other.items() for f in files]
    size = None
    if content_size == "train":
        h, w = load(next(iter(lab.values()))[0]).shape[:2]
        size = (w, h)
    for i in rng.choice(len(content), min(n_content, len(content)), replace=False):
        cls, f = content[i]
        img = load(f)
        if size is None:
            put(img, "content", line_sets(line)[1], {}, f, cls)
            continue
        up = size[0] * size[1] > img.shape[0] * img.shape[1]
        img = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC if up else cv2.INTER_AREA)
        put(img, "content", f"{line_sets(line)[1]}@{size[0]}x{size[1]}", {"resized_to": list(size)}, f, cls)
    pd.DataFrame(rows).to_csv(out / "truth.csv", index=False)
    return out


def mosaics(data: Path, out: Path, k: int, seed: int = 0) -> Path:
    """``out`` laid out like ``data``: K x K mosaics of NEU, (K+1) x (K+1) of X-SDD (made once)."""
    if (out / "done").is_file():
        return out
    rng = np.random.default_rng(seed)
    for name, n in (("neu_det", k), ("x_sdd", k + 1)):
        for cls, files in _images(data / name / "images").items():
            files = [files[i] for i in rng.permutation(len(files))]
            (out / name / "images" / cls).mkdir(parents=True, exist_ok=True)
            for m in range(len(files) // (n * n)):
                tiles = [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files[m * n * n:(m + 1) * n * n]]
                side = min(min(t.shape[:2]) for t in tiles)  # two X-SDD images are narrower
                tiles = [cv2.resize(t, (side, side)) for t in tiles]
                grid = np.vstack([np.hstack(tiles[r * n:(r + 1) * n]) for r in range(n)])
                cv2.imwrite(str(out / name / "images" / cls / f"mosaic{m:04d}.png"), grid)
    (out / "done").touch()
    return out


SHARED = Path(__file__).resolve().parents[2] / "shared"


def score_script(data: Path) -> Path:
    """``eval/score.py`` beside ``data`` (``../shared/data``), else the shared folder's."""
    beside = data.parent / "eval" / "score.py"
    return beside if beside.is_file() else SHARED / "eval" / "score.py"


def _line(value: str) -> str:
    if value in LINES or (value.count(":") == 1 and all(value.split(":"))):
        return value
    raise argparse.ArgumentTypeError(f"expected one of {sorted(LINES)} or LAB:OTHER, got {value!r}")


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The options every steel benchmark script shares: --bench, --data, --seed, --rebuild, --json."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=Path("/tmp/steel_bench"))
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--mosaic", type=int, default=0, metavar="K",
                    help="build from K x K mosaics (larger images with native detail; see steel_bench.py)")
    ap.add_argument("--line", default="neu", type=_line,
                    help="the lab's line: neu (default; X-SDD is the other line), xsdd (NEU is the other line) "
                         "or LAB:OTHER, two data sets under --data")
    ap.add_argument("--content-size", choices=["native", "train"], default="native",
                    help="the other line's images at their own pixel size (default) or resized to the lab's")
    ap.add_argument("--variants", choices=sorted(VARIANTS), default="default",
                    help="the shifts: default, or unseen (other shifts of each family; see steel_bench.py)")
    ap.add_argument("--json", type=Path, help="write all figures here")
    return ap


def ensure_built(a: argparse.Namespace) -> Path:
    """Build the benchmark of ``a`` (parsed :func:`bench_parser` options) unless it exists."""
    line = getattr(a, "line", "neu")
    missing = [name for name in line_sets(line) if not (a.data / name / "images").is_dir()]
    if missing:
        raise SystemExit(f"no {' or '.join(missing)} images at {a.data} (see ../shared/data/README.md)")
    if line != "neu" and getattr(a, "mosaic", 0) > 1:
        raise SystemExit("--mosaic builds the NEU line only")
    if getattr(a, "mosaic", 0) > 1 and getattr(a, "content_size", "native") != "native":
        raise SystemExit("--content-size train builds the native-size lines only, not --mosaic")
    if (a.bench / "truth.csv").is_file() and not a.rebuild:
        truth = pd.read_csv(a.bench / "truth.csv")
        other = truth.query("family == 'content'")["variant"]
        want = line_sets(line)[1]
        if len(other) and (other.iloc[0].split("@")[0] != want
                           or ("@" in other.iloc[0]) != (getattr(a, "content_size", "native") == "train")):
            raise SystemExit(f"{a.bench} holds another line's benchmark (content: {other.iloc[0]}); "
                             f"pass --rebuild or another --bench")
        names = {n for fam in VARIANTS[getattr(a, "variants", "default")](np.random.default_rng(0)).values() for n in fam}
        shifted = set(truth.query("family in ['lighting', 'angle', 'resolution']")["variant"])
        if shifted - names:
            raise SystemExit(f"{a.bench} holds other shifts ({', '.join(sorted(shifted - names))}); "
                             f"pass --rebuild or another --bench")
    if a.rebuild or not (a.bench / "truth.csv").is_file():
        variants = getattr(a, "variants", "default")
        if getattr(a, "mosaic", 0) > 1:
            k2 = a.mosaic ** 2
            data = mosaics(a.data, a.bench.parent / f"{a.bench.name}_mosaic{a.mosaic}_data", a.mosaic)
            build(data, a.bench, a.seed, n_train=-(-150 // k2), n_clean=-(-50 // k2), n_content=150, variants=variants)
        elif line != "neu":  # X-SDD's 7 classes hold 63-397 images: half of each trains
            n_classes = len(_images(a.data / line_sets(line)[0] / "images"))
            n_clean = 25 if line == "xsdd" else max(25, 200 // n_classes)  # about 200 clean images
            build(a.data, a.bench, a.seed, n_train=0, n_clean=n_clean, line=line,
                  content_size=a.content_size, variants=variants)
        else:
            build(a.data, a.bench, a.seed, content_size=a.content_size, variants=variants)
    return a.bench


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not (a.data / "neu_det").is_dir():
        raise SystemExit(f"no steel data at {a.data} (see ../shared/data/README.md)")
    print(build(a.data, a.out, a.seed))
