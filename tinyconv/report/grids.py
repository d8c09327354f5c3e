"""Example grids: sample test images of one kind (all attributes right, some wrong, all wrong) as a
PNG, each upscaled (nearest neighbour, so no detail is invented) with its true and predicted
labels written under it, a wrong prediction in red.
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS = ("all_right", "some_wrong", "all_wrong")
TITLES = {"all_right": "every attribute right", "some_wrong": "one or more but not all wrong",
          "all_wrong": "every attribute wrong"}
RIGHT, WRONG, INK, PAPER = (20, 110, 40), (200, 30, 30), (30, 30, 30), (255, 255, 255)


def kind_of(n_correct, K):
    """Which grid an image with ``n_correct`` of ``K`` attributes right belongs to."""
    return "all_right" if n_correct == K else "all_wrong" if n_correct == 0 else "some_wrong"


def sample_indices(mask, count, seed=0):
    """Up to ``count`` indices where ``mask`` is true, drawn without replacement, in ascending order."""
    idx = np.flatnonzero(mask)
    if len(idx) > count:
        idx = np.sort(np.random.default_rng(seed).choice(idx, count, replace=False))
    return idx


def _font(size, bold=False):
    """DejaVu Sans (shipped with matplotlib) when available, else Pillow's own font."""
    try:
        from matplotlib import font_manager
        path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans",
                                                                 weight="bold" if bold else "normal"))
        return ImageFont.truetype(path, size)
    except Exception:
        return ImageFont.load_default(size)


def draw_grid(images, y_true, y_pred, prob, attributes, title, notes=(), cols=6, min_height=160):
    """A PIL image: a title block, then one cell per image (upscaled picture + a line per attribute).

    images (n, H, W, 3) uint8; y_true, y_pred (n, K) 0/1; prob (n, K). Line format
    ``Smiling  T:yes  P:no .31`` = true label, predicted label, predicted probability.
    """
    n = len(images)
    font, small, bold = _font(13), _font(12), _font(16, bold=True)
    H, W = (images.shape[1:3] if n else (54, 44))
    scale = max(1, -(-min_height // H))            # integer factor: nearest-neighbour stays crisp
    line_h, pad = 17, 8
    cell_w = max(W * scale, 215) + 2 * pad
    cell_h = H * scale + pad + line_h * len(attributes) + 2 * pad
    cols = max(1, min(cols, n)) if n else 1
    rows = -(-n // cols) if n else 0
    head_lines = [title] + list(notes) + ["T = true label, P = predicted label and probability; red = wrong"]
    head_h = pad + 22 + 17 * (len(head_lines) - 1) + pad
    # wide enough for the title and notes too, however few images there are
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([probe.textlength(title, font=bold)] + [probe.textlength(t, font=small) for t in head_lines[1:]])
    width = max(cols * cell_w, int(text_w) + 2 * pad)
    canvas = Image.new("RGB", (width, head_h + (rows * cell_h if n else 40)), PAPER)
    d = ImageDraw.Draw(canvas)
    d.text((pad, pad), title, font=bold, fill=INK)
    for i, line in enumerate(head_lines[1:]):
        d.text((pad, pad + 24 + 17 * i), line, font=small, fill=WRONG if "NOT CelebA" in line else INK)
    if n == 0:
        d.text((pad, head_h + 4), "(no test image of this kind)", font=font, fill=INK)
    for i in range(n):
        x0, y0 = (i % cols) * cell_w + pad, head_h + (i // cols) * cell_h
        img = Image.fromarray(images[i]).resize((W * scale, H * scale), Image.NEAREST)
        canvas.paste(img, (x0 + (cell_w - 2 * pad - W * scale) // 2, y0))
        y = y0 + H * scale + pad
        for k, name in enumerate(attributes):
            t, p = int(y_true[i, k]), int(y_pred[i, k])
            text = f"{name}  T:{'yes' if t else 'no'}  P:{'yes' if p else 'no'} {prob[i, k]:.2f}"
            d.text((x0, y), text, font=font, fill=RIGHT if t == p else WRONG)
            y += line_h
    return canvas


def write_grids(out_dir, ds, split, y_true, y_pred, prob, label, notes=(), per_grid=12, seed=0):
    """grid_<kind>.png for each kind in KINDS; returns {kind: (path, count of images of that kind)}."""
    K = y_true.shape[1]
    n_correct = (y_true == y_pred).sum(axis=1)
    kinds = np.array([kind_of(c, K) for c in n_correct])
    out = {}
    for kind in KINDS:
        mask = kinds == kind
        idx = sample_indices(mask, per_grid, seed)
        images = ds.images(split, idx) if len(idx) else np.zeros((0,) + tuple(ds.image_size) + (3,), np.uint8)
        title = (f"{label}: {split} images with {TITLES[kind]} "
                 f"({int(mask.sum())} of {len(mask)}, {len(idx)} shown)")
        grid = draw_grid(images, y_true[idx], y_pred[idx], prob[idx], ds.attributes, title, notes)
        path = out_dir / f"grid_{kind}.png"
        grid.save(path, optimize=True)
        out[kind] = (path, int(mask.sum()))
    return out
