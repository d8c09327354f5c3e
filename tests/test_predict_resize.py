"""One resize policy: a photo of another size becomes the same model input in training and in prediction."""
import json
import sys

import h5py
import numpy as np
from PIL import Image

import tinyconv.predict as predict_module
from tinyconv.data import prepare, synthesize
from tinyconv.data.batches import to_model_input
from tinyconv.data.resize import RESIZE_POLICY, resize_to_model
from tinyconv.predict import load
from test_export_helpers import face_images, make_run

H, W = 54, 44


def test_prepare_and_predict_share_one_function():
    prepare_module = sys.modules["tinyconv.data.prepare"]  # tinyconv.data.prepare is also a function name
    assert prepare_module.resize_to_model is resize_to_model
    assert predict_module.resize_to_model is resize_to_model


def test_a_photo_of_another_size_is_the_same_input_in_training_and_prediction(tmp_path):
    root = synthesize(tmp_path / "celeba", count=4, seed=0, workers=1, progress=False)
    faces = face_images(2, 218, 178, seed=8)
    # 000001.jpg: a wide colour photo; 000002.jpg: a tall grey one (both not 178x218)
    Image.fromarray(faces[0]).resize((320, 200)).save(root / "img_align_celeba" / "000001.jpg", quality=90)
    Image.fromarray(faces[1]).convert("L").resize((150, 260)).save(root / "img_align_celeba" / "000002.jpg")
    out = prepare(root, tmp_path / "prepared.h5", image_size=(H, W), drop_blurry=False, workers=1,
                  progress=False)
    with h5py.File(out, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["filenames"][()]]
        rows = {n: f["images"][i] for i, n in enumerate(names)}
        assert f.attrs["resize_policy"] == RESIZE_POLICY
        resized = " ".join(json.loads(f.attrs["resized"]))
        assert "000001.jpg" in resized and "000002.jpg" in resized  # both went through the policy

    run_dir, model = make_run(tmp_path / "runs")
    m = load(run_dir)
    for name in ("000001.jpg", "000002.jpg"):
        path = root / "img_align_celeba" / name
        x_predict = predict_module.prepare_images([path], (H, W))[0]
        np.testing.assert_array_equal(x_predict, rows[name])  # identical pixels, bit for bit
        # and the probabilities are the model's on the training pipeline's input
        np.testing.assert_array_equal(m.predict([path]), model.predict_proba(to_model_input(rows[name][None], np)))
