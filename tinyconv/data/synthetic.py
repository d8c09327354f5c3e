"""A built-in synthetic face dataset in the official CelebA layout: a stand-in, NEVER CelebA.

CelebA cannot be downloaded on every machine, and a new user should see the whole pipeline work
before fetching 1.4 GB. :func:`synthesize` draws simple cartoon faces with vectorised NumPy and
writes them exactly as CelebA ships (``img_align_celeba/000001.jpg``... at 178x218, the 40-column
``list_attr_celeba.txt`` padded as the original, ``list_eval_partition.txt``), so the real loader
runs on them. It is for testing and teaching only: any number measured on it is a number about
cartoons, not a CelebA result, and everything downstream says so (``Dataset.synthetic``).

What the three studied attributes look like (a person would recognise them):

* **Eyeglasses** (about 6.5%): thin frames (1.3-2.8 px) around both eyes, a bridge and temples;
  a fifth of them tinted lenses.
* **Male** (about 42%): a squarer and wider jaw, mostly short hair (long hair for 20%), thicker
  eyebrows, and for half of them stubble, a beard or a moustache.
* **Smiling** (about 48%): the mouth corners curve up (sometimes open, showing teeth); a neutral
  mouth is straight or slightly down.

Faces vary in skin tone, head shape and size, pose (rotation, shift), lighting, hair colour,
clothes, background and sensor noise. About 5% are marked Blurry and really blurred. Label noise
(``label_noise``, default 3%) makes the recorded label disagree with the drawing: each of the three
labels is flipped with probability ``label_noise * 2 * min(rate, 1 - rate)``, which keeps the
positive rates near CelebA's (so rare Eyeglasses is flipped less often than Male). The other 37
attributes are random with roughly CelebA's rates, kept consistent with the drawing where one is
drawn (hair colour, beard, open mouth). Image ``i`` is drawn from ``default_rng([seed, i])``: the
same seed gives the same files however many workers draw them.
"""
import math
import numbers
import os
import secrets
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from .celeba import ATTRIBUTE_NAMES, SYNTHETIC_MARKER
from .errors import DataError, UsageError

H, W = 218, 178
RATES = {"Eyeglasses": 0.065, "Male": 0.42, "Smiling": 0.48, "Blurry": 0.05}
# Rough CelebA rates for the attributes that are only written, not drawn.
_OTHER_RATES = {
    "Arched_Eyebrows": .27, "Attractive": .51, "Bags_Under_Eyes": .20, "Bald": .02, "Bangs": .15,
    "Big_Lips": .24, "Big_Nose": .23, "Bushy_Eyebrows": .14, "Chubby": .06, "Double_Chin": .05,
    "High_Cheekbones": .46, "Narrow_Eyes": .12, "Oval_Face": .28, "Pale_Skin": .04,
    "Pointy_Nose": .28, "Receding_Hairline": .08, "Rosy_Cheeks": .07, "Straight_Hair": .21,
    "Wavy_Hair": .32, "Wearing_Earrings": .19, "Wearing_Hat": .05, "Wearing_Necklace": .12,
    "Wearing_Necktie": .07, "Young": .77,
}
HAIR = {"Black_Hair": (25, 20, 18), "Brown_Hair": (95, 60, 35), "Blond_Hair": (200, 165, 95),
        "Gray_Hair": (150, 148, 145)}
DEFAULT_COUNT = 3000
MAX_COUNT = 999_999      # file names stay CelebA's six digits
MAX_WORKERS = 256
BYTES_PER_IMAGE = 32_000  # an upper bound for the free-space check (the JPEGs average about 11 kB)
PARTITION_FRACTIONS = (0.8, 0.1, 0.1)

_Y, _X = np.mgrid[0:H, 0:W].astype(np.float32)


def _soft(d):
    """Signed distance in pixels (negative inside) -> antialiased coverage in [0, 1]."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _ellipse(u, v, a, b, p=2.0):
    """Approximate signed distance to the superellipse |u/a|^p + |v/b|^p = 1 (pixels)."""
    r = (np.abs(u / a) ** p + np.abs(v / b) ** p) ** (1.0 / p) if p != 2.0 else np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return (r - 1.0) * min(a, b)


class _Canvas:
    """An (H, W, 3) float32 image and the face-local coordinates u (right), v (down) of each pixel.

    ``paint`` evaluates a shape only inside the window that can contain it (a feature of radius R
    around a local point), which keeps small features (eyes, mouth, frames) cheap.
    """

    def __init__(self, img, cx, cy, th, s):
        self.img, self.cx, self.cy, self.co, self.si, self.s = img, cx, cy, np.cos(th), np.sin(th), s
        self.u = ((_X - cx) * self.co + (_Y - cy) * self.si) / s
        self.v = (-(_X - cx) * self.si + (_Y - cy) * self.co) / s

    def window(self, uc, vc, r):
        x = self.cx + self.s * (uc * self.co - vc * self.si)
        y = self.cy + self.s * (uc * self.si + vc * self.co)
        r = r * self.s + 2
        return (slice(max(0, int(y - r)), max(0, min(H, int(y + r) + 1))),
                slice(max(0, int(x - r)), max(0, min(W, int(x + r) + 1))))

    def paint(self, dist, color, alpha=1.0, at=None):
        """Blend ``color`` where ``dist(u, v)`` (signed pixels, < 0 inside) is inside.

        ``at`` = (uc, vc, radius) limits the work to that window; None paints the whole image.
        """
        sl = self.window(*at) if at is not None else (slice(None), slice(None))
        m = _soft(dist(self.u[sl], self.v[sl])) * alpha
        _blend(self.img[sl], m, color)
        return m


def _blend(img, m, color):
    """img (h, w, 3) <- img * (1 - m) + color * m, in place; color (3,) or (h, w, 3)."""
    m = m[..., None]
    img *= 1.0 - m
    img += m * np.asarray(color, dtype=np.float32)


def draw_face(rng, male, glasses, smiling, blurry):
    """One face: uint8 (218, 178, 3), plus a dict of drawn facts for the other attributes."""
    facts = {}
    # One generator per attribute-bearing part: switching an attribute on or off changes only its
    # own pixels (the rest of the face, the noise and the lighting stay identical).
    rng, r_beard, r_mouth, r_glasses, r_finish = rng.spawn(5)
    img = np.empty((H, W, 3), np.float32)
    # background: a gradient between two random colours plus low-frequency blotches
    c1, c2 = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    ang = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + ((_X - W / 2) * np.cos(ang) + (_Y - H / 2) * np.sin(ang)) / 250.0, 0, 1)[..., None]
    img[:] = c1 * (1 - t) + c2 * t
    blot = Image.fromarray(rng.uniform(0, 255, (5, 4)).astype(np.uint8)).resize((W, H), Image.BILINEAR)
    img += (np.asarray(blot, np.float32)[..., None] - 128) * rng.uniform(0.05, 0.25)

    # pose: face-local coordinates (u right, v down, pixels at scale 1)
    cv = _Canvas(img, W / 2 + rng.normal(0, 4), 118 + rng.normal(0, 4), rng.normal(0, 0.08),
                 rng.uniform(0.9, 1.08))
    u, v = cv.u, cv.v

    skin = np.array([rng.uniform(80, 235)] * 3) * np.array([1.0, rng.uniform(0.72, 0.85), rng.uniform(0.55, 0.72)])
    hair_name = rng.choice(list(HAIR), p=[0.35, 0.3, 0.2, 0.15])
    facts["hair"] = hair_name
    hair = np.array(HAIR[hair_name]) * rng.uniform(0.8, 1.2)
    a, b = rng.uniform(48, 57), rng.uniform(64, 74)
    long_hair = (rng.random() < 0.2) if male else (rng.random() < 0.8)

    # clothes and shoulders
    cv.paint(lambda u, v: np.maximum(95 - v, np.abs(u) - 60 - (v - 95) * 1.2), rng.uniform(20, 230, 3))
    if long_hair:  # hair mass behind the head, down to the shoulders
        cv.paint(lambda u, v: np.maximum(_ellipse(u, v - 12, a + 13, b + 26), v - 100), hair * 0.85,
                 at=(0, 12, b + 30))
    cv.paint(lambda u, v: np.maximum(np.abs(u) - 0.45 * a, np.maximum(40 - v, v - 110)), skin * 0.82,
             at=(0, 75, 60))  # neck
    for sx in (-1, 1):  # ears
        cv.paint(lambda u, v: _ellipse(u - sx * (a - 2), v + 2, 7, 12), skin * 0.9, at=(sx * (a - 2), -2, 15))

    # head: round top; the jaw is squarer and wider for men (superellipse exponent, lower width)
    p_low = rng.uniform(2.4, 3.2) if male else rng.uniform(1.7, 2.4)
    a_low = a * (rng.uniform(0.95, 1.04) if male else rng.uniform(0.84, 0.95))
    d_head = np.where(v < 0, _ellipse(u, v, a, b), _ellipse(u, v, a_low, b, p_low))
    head = _soft(d_head)
    light = rng.uniform(-0.3, 0.3)
    shade = (1.0 + light * u / a - 0.12 * np.clip(v / b, 0, 1) ** 2)[..., None]
    img *= 1.0 - head[..., None]
    img += head[..., None] * skin * shade

    # facial hair (half of the men): stubble or a full beard over the lower face, maybe a moustache
    facts["beard"] = facts["mustache"] = facts["stubble"] = False
    mouth_y = rng.uniform(33, 40)
    if male and r_beard.random() < 0.5:
        kind = r_beard.choice(["stubble", "beard"])
        facts[kind] = True
        _blend(img, head * _soft(mouth_y - 14 - v) * (0.25 if kind == "stubble" else 0.7), hair * 0.8)
        if r_beard.random() < 0.6:
            facts["mustache"] = True
            cv.paint(lambda u, v: np.maximum(np.abs(u) - 15, np.abs(v - mouth_y + 6) - 2.5), hair * 0.7, 0.8,
                     at=(0, mouth_y - 6, 20))

    # hair on top: a cap over the upper head, thicker and lower for long hair
    hl0 = -b * rng.uniform(0.45, 0.6)
    slope = 0.0 if long_hair else 0.12
    grow = (6, 8) if long_hair else (3, 5)
    cv.paint(lambda u, v: np.maximum(_ellipse(u, v + 3, a + grow[0], b + grow[1]), v - hl0 - slope * np.abs(u)),
             hair, at=(0, -b * 0.5, b + 10))

    # eyes and eyebrows
    ex, ey = rng.uniform(17, 21), rng.uniform(-12, -6)
    brow_t = rng.uniform(2.2, 3.4) if male else rng.uniform(1.3, 2.3)
    iris = rng.uniform(20, 110, 3)
    for sx in (-1, 1):
        at = (sx * ex, ey - 4, 16)
        cv.paint(lambda u, v: _ellipse(u - sx * ex, v - ey, 6.5, 3.3), (235, 232, 225), at=at)
        cv.paint(lambda u, v: np.sqrt((u - sx * ex) ** 2 + (v - ey) ** 2) - 2.6, iris, at=at)
        cv.paint(lambda u, v: np.maximum(np.abs(v - ey + 9 + 0.03 * (u - sx * ex) ** 2) - brow_t / 2,
                                         np.abs(u - sx * ex) - 10), hair * 0.7, at=at)
    # nose: a soft shadow and the base
    cv.paint(lambda u, v: np.maximum(np.abs(u - 1.5) - 1.2, np.abs(v - 6) - 11), skin * 0.7, 0.5, at=(0, 8, 16))
    cv.paint(lambda u, v: _ellipse(u, v - 18, 6, 2.5), skin * 0.6, 0.6, at=(0, 18, 9))

    # mouth: v = mouth_y - k * u^2 (+ offset), corners up when k > 0 (smiling)
    mw = r_mouth.uniform(12, 17)
    k = r_mouth.uniform(0.012, 0.045) if smiling else r_mouth.uniform(-0.015, 0.012)

    def curve(u, v):
        return v - (mouth_y - k * u ** 2 + k * mw ** 2 * 0.3)
    opened = smiling and r_mouth.random() < 0.5
    facts["mouth_open"] = opened
    lip = r_mouth.uniform(0.55, 0.75) * skin * np.array([1.15, 0.8, 0.8])
    at = (0, mouth_y, mw + 6)
    if opened:
        gap_h = r_mouth.uniform(3, 6)

        def opening(u, v, inset, frac):
            c, gap = curve(u, v), gap_h * np.clip(1 - (u / mw) ** 2, 0, 1) * frac
            return np.maximum(np.abs(u) - mw + inset, np.maximum(-c, c - gap))
        cv.paint(lambda u, v: opening(u, v, 0, 1.0), (60, 25, 25), at=at)
        cv.paint(lambda u, v: opening(u, v, 3, 0.45), (235, 230, 220), at=at)
    lip_t = r_mouth.uniform(1.0, 1.6)
    cv.paint(lambda u, v: np.maximum(np.abs(u) - mw, np.abs(curve(u, v)) - lip_t), lip, at=at)

    # eyeglasses: two rings around the eyes, a bridge and temples to the ears
    if glasses:
        t = r_glasses.uniform(1.3, 2.8)
        frame = r_glasses.uniform(0, 60, 3) if r_glasses.random() < 0.6 else r_glasses.uniform(140, 210, 3)
        ga, gb = r_glasses.uniform(10, 13), r_glasses.uniform(7.5, 10)
        tinted = r_glasses.random() < 0.2
        facts["tinted"] = tinted
        for sx in (-1, 1):
            at = (sx * ex, ey, ga + 4)

            def ring(u, v):
                return _ellipse(u - sx * ex, v - ey, ga, gb, p=3.0)
            if tinted:
                cv.paint(ring, (30, 30, 35), 0.6, at=at)
            cv.paint(lambda u, v: np.abs(ring(u, v)) - t / 2, frame, at=at)
            cv.paint(lambda u, v: np.maximum(np.abs(v - ey + 2) - t / 2,
                                             np.maximum(ex + ga - sx * u, sx * u - a)),
                     frame, at=(sx * (ex + ga + a) / 2, ey, (a - ex - ga) / 2 + 4))
        cv.paint(lambda u, v: np.maximum(np.abs(v - ey + 1) - t / 2, np.abs(u) - (ex - ga) - 0.5), frame,
                 at=(0, ey, ex))

    # global lighting, sensor noise, blur
    img *= r_finish.uniform(0.75, 1.15)
    img += r_finish.normal(0, r_finish.uniform(2, 7), img.shape).astype(np.float32)
    out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    if blurry:
        out = out.filter(ImageFilter.GaussianBlur(r_finish.uniform(2.0, 3.5)))
    return np.asarray(out), facts


def sample_attributes(rng, label_noise):
    """(drawn flags for Male, Eyeglasses, Smiling, Blurry, recorded -1/1 values for all 40)."""
    drawn = {name: rng.random() < rate for name, rate in RATES.items()}
    recorded = dict(drawn)
    for name in ("Eyeglasses", "Male", "Smiling"):
        r = RATES[name]
        if rng.random() < label_noise * 2 * min(r, 1 - r):
            recorded[name] = not recorded[name]
    for name, rate in _OTHER_RATES.items():
        recorded[name] = rng.random() < rate
    return drawn, recorded


def _one(seed, i, label_noise):
    """Image ``i`` (0-based) of the set with this seed: (uint8 image, int8 (40,) row)."""
    rng = np.random.default_rng([seed, i])
    drawn, rec = sample_attributes(rng, label_noise)
    img, facts = draw_face(rng, drawn["Male"], drawn["Eyeglasses"], drawn["Smiling"], drawn["Blurry"])
    male = drawn["Male"]
    for name in HAIR:
        rec[name] = facts["hair"] == name
    rec["No_Beard"] = not (facts["beard"] or facts["mustache"])
    rec["Goatee"] = facts["beard"] and rng.random() < 0.4
    rec["Mustache"] = facts["mustache"]
    rec["5_o_Clock_Shadow"] = facts["stubble"]
    rec["Sideburns"] = facts["beard"] and rng.random() < 0.5
    rec["Mouth_Slightly_Open"] = facts["mouth_open"] or rng.random() < 0.2
    rec["Heavy_Makeup"] = (not male) and rng.random() < 0.65
    rec["Wearing_Lipstick"] = (not male) and rng.random() < 0.8
    row = np.array([1 if rec[n] else -1 for n in ATTRIBUTE_NAMES], dtype=np.int8)
    return img, row


def _draw_range(out_dir, seed, start, stop, label_noise, quality):
    """Draw and save images ``start..stop-1``; return int8 (stop - start, 40) attribute rows."""
    rows = np.empty((stop - start, len(ATTRIBUTE_NAMES)), dtype=np.int8)
    for j, i in enumerate(range(start, stop)):
        img, rows[j] = _one(seed, i, label_noise)
        Image.fromarray(img).save(os.path.join(out_dir, image_name(i)), quality=quality)
    return rows


def image_name(i):
    """0-based index -> CelebA file name (``000001.jpg`` for i = 0)."""
    return f"{i + 1:06d}.jpg"


def partition_of(i, count):
    """Contiguous ~80/10/10 split in file order, as CelebA's is."""
    n_train = int(round(count * PARTITION_FRACTIONS[0]))
    n_val = int(round(count * PARTITION_FRACTIONS[1]))
    return 0 if i < n_train else (1 if i < n_train + n_val else 2)


def synthesize(out, count=DEFAULT_COUNT, seed=0, label_noise=0.03, workers=None, progress=True,
               quality=92):
    """Write ``count`` synthetic faces in the official CelebA layout into the new folder ``out``.

    A stand-in for testing and teaching, never CelebA (see the module docstring). The folder is
    built under a unique temporary name beside ``out`` and renamed when complete, so an interrupted
    or failed run (Ctrl-C, disk full) never leaves a folder that looks finished. Returns ``Path(out)``.
    Bad arguments (and an ``out`` that is a file or a non-empty folder) raise UsageError; a failed
    write raises DataError.
    """
    out = Path(out)
    count, seed, label_noise, workers, quality = check_options(count, seed, label_noise, workers, quality)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: already exists and is {'not a folder' if not out.is_dir() else 'not empty'}; "
                         "choose a new folder")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    need, free = count * BYTES_PER_IMAGE, shutil.disk_usage(parent).free
    if need > free:
        raise DataError(f"{parent}: not enough free space for {count} synthetic images: they need up to "
                        f"{need / 1e3:,.0f} kB, {free / 1e3:,.0f} kB free")
    tmp = parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"  # unique: never shared
    img_dir = tmp / "img_align_celeba"
    try:
        img_dir.mkdir(parents=True)
        rows = _draw_all(img_dir, seed, count, label_noise, quality, workers, progress)
        _write_annotations(tmp, rows, seed, label_noise)
        if out.exists():
            out.rmdir()  # empty (checked above); fails if another process filled it meanwhile
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and out.is_dir() and any(out.iterdir()):
            raise DataError(f"{out}: another process wrote this folder meanwhile; this run's copy was "
                            "removed") from None
        if isinstance(exc, OSError):  # disk full, quota, I/O error
            raise DataError(f"{out}: writing failed: {' '.join(str(exc).split())}; the partial folder "
                            "was removed") from None
        raise
    return out


def check_options(count, seed, label_noise, workers, quality=92):
    """The options of :func:`synthesize`, checked (UsageError naming the option) and normalised."""
    def integer(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if not integer(count) or not 1 <= count <= MAX_COUNT:
        raise UsageError(f"count must be an integer from 1 to {MAX_COUNT}, got {count!r}")
    if not integer(seed) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(label_noise, numbers.Real) or not math.isfinite(label_noise) or \
            not 0 <= label_noise <= 0.5:
        raise UsageError(f"label_noise must be a number from 0 to 0.5, got {label_noise!r}")
    if workers is not None and (not integer(workers) or not 1 <= workers <= MAX_WORKERS):
        raise UsageError(f"workers must be an integer from 1 to {MAX_WORKERS} (or None), got {workers!r}")
    if not integer(quality) or not 1 <= quality <= 95:
        raise UsageError(f"quality must be an integer from 1 to 95, got {quality!r}")
    return int(count), int(seed), float(label_noise), workers, int(quality)


def _draw_all(img_dir, seed, count, label_noise, quality, workers, progress):
    workers = workers or max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    step = 50
    ranges = [(s, min(s + step, count)) for s in range(0, count, step)]
    workers = min(workers, len(ranges))
    rows = np.empty((count, len(ATTRIBUTE_NAMES)), dtype=np.int8)
    with tqdm(total=count, desc="synthesize", unit="img", disable=not progress) as bar:
        if workers == 1:
            for s, e in ranges:
                rows[s:e] = _draw_range(str(img_dir), seed, s, e, label_noise, quality)
                bar.update(e - s)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futs = [(s, e, pool.submit(_draw_range, str(img_dir), seed, s, e, label_noise, quality))
                        for s, e in ranges]
                for s, e, f in futs:
                    rows[s:e] = f.result()
                    bar.update(e - s)
    return rows


def _write_annotations(root, rows, seed, label_noise):
    count = len(rows)
    with open(root / "list_attr_celeba.txt", "w", newline="\n") as f:
        f.write(f"{count}\n")
        f.write(" ".join(ATTRIBUTE_NAMES) + " \n")
        for i, row in enumerate(rows):
            # official padding: each value right-aligned in 2 characters after one space
            f.write(image_name(i) + "".join(f" {int(x):2d}" for x in row) + "\n")
    with open(root / "list_eval_partition.txt", "w", newline="\n") as f:
        for i in range(count):
            f.write(f"{image_name(i)} {partition_of(i, count)}\n")
    (root / SYNTHETIC_MARKER).write_text(
        "These images are SYNTHETIC cartoon faces drawn by tinyconv.data.synthesize\n"
        f"(count={count}, seed={seed}, label_noise={label_noise}). They are a stand-in for testing\n"
        "and teaching, in the CelebA file layout. They are NOT CelebA: never report results on\n"
        "them as CelebA results.\n")
