"""The synthetic stand-in: deterministic per seed, CelebA-like rates, attributes visible where expected."""
import numpy as np
import pytest

from tinyconv.data import DataError, synthesize
from tinyconv.data.celeba import SYNTHETIC_MARKER
from tinyconv.data.synthetic import RATES, draw_face, partition_of, sample_attributes

from conftest_data import read_official


def face(i, **attrs):
    kw = dict(male=False, glasses=False, smiling=False, blurry=False)
    kw.update(attrs)
    img, _ = draw_face(np.random.default_rng([7, i]), **kw)
    return img.astype(np.int16)


def changed(a, b, thresh=30):
    """Boolean (H, W) mask of pixels that differ clearly between two faces."""
    return np.abs(a - b).max(axis=2) > thresh


def test_same_seed_same_files_regardless_of_workers(tmp_path):
    a = synthesize(tmp_path / "a", count=12, seed=4, workers=1, progress=False)
    b = synthesize(tmp_path / "b", count=12, seed=4, workers=2, progress=False)
    c = synthesize(tmp_path / "c", count=12, seed=5, workers=1, progress=False)
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for i in range(1, 13):
        f = f"img_align_celeba/{i:06d}.jpg"
        assert (a / f).read_bytes() == (b / f).read_bytes()
        assert (a / f).read_bytes() != (c / f).read_bytes()
    assert (a / SYNTHETIC_MARKER).read_text().count("NOT CelebA") == 1
    with pytest.raises(DataError, match="not empty"):
        synthesize(a, count=3, progress=False)


def test_positive_rates_near_celeba():
    n = 20000
    drawn = np.zeros((n, 4), bool)
    rec = np.zeros((n, 3), bool)
    for i in range(n):
        d, r = sample_attributes(np.random.default_rng([11, i]), label_noise=0.03)
        drawn[i] = [d["Eyeglasses"], d["Male"], d["Smiling"], d["Blurry"]]
        rec[i] = [r["Eyeglasses"], r["Male"], r["Smiling"]]
    se = lambda p: 4 * np.sqrt(p * (1 - p) / n)  # noqa: E731  (4 standard errors)
    for j, (name, target) in enumerate([("Eyeglasses", .0651), ("Male", .4168), ("Smiling", .4821)]):
        assert abs(rec[:, j].mean() - target) < se(target) + 0.005, name
    assert abs(drawn[:, 3].mean() - RATES["Blurry"]) < se(0.05)
    flips = (drawn[:, :3] != rec).mean(axis=0)  # label noise 3% * 2 * min(rate, 1 - rate)
    assert np.allclose(flips, [0.03 * 2 * .065, 0.03 * 2 * .42, 0.03 * 2 * .48], atol=0.004)
    assert all(sample_attributes(np.random.default_rng([11, i]), 0.0)[0] ==
               {k: v for k, v in sample_attributes(np.random.default_rng([11, i]), 0.0)[1].items() if k in RATES}
               for i in range(50))


def test_file_rates_and_partition(tmp_path):
    root = synthesize(tmp_path / "s", count=300, seed=2, workers=2, progress=False)
    files, names, values, part = read_official(root)
    assert len(files) == 300 and files[0] == "000001.jpg" and files[-1] == "000300.jpg"
    p = np.array([part[f] for f in files])
    assert list(np.bincount(p)) == [240, 30, 30] and (np.diff(p) >= 0).all()
    male = (values[:, names.index("Male")] == 1).mean()
    assert 0.30 < male < 0.54
    # facial-hair attributes agree with Male: no woman has a beard drawn
    fem = values[:, names.index("Male")] == -1
    drawn_male = np.array([sample_attributes(np.random.default_rng([2, i]), 0.03)[0]["Male"] for i in range(300)])
    assert (values[~drawn_male, names.index("No_Beard")] == 1).all()
    assert fem.sum() > 0 and partition_of(0, 10) == 0 and partition_of(9, 10) == 2


def test_glasses_change_only_the_eye_band():
    for i in range(5):
        m = changed(face(i), face(i, glasses=True))
        ys, xs = np.nonzero(m)
        assert len(ys) > 150, "frames must be visible"
        assert ys.min() > 80 and ys.max() < 130  # eyes sit near y = 110 in a 218-high image


def test_smile_changes_only_the_mouth():
    for i in range(5):
        m = changed(face(i), face(i, smiling=True))
        ys, xs = np.nonzero(m)
        assert len(ys) > 20
        assert ys.min() > 125 and ys.max() < 175 and xs.min() > 55 and xs.max() < 125


def test_male_changes_jaw_or_hair():
    for i in range(5):
        m = changed(face(i), face(i, male=True))
        assert m[150:200].sum() > 100  # the jaw (and any beard) below the mouth


def test_blurry_is_blurred():
    def sharpness(img):
        g = img.mean(axis=2)
        return np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()
    for i in range(3):
        assert sharpness(face(i, blurry=True)) < 0.5 * sharpness(face(i))
