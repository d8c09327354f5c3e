"""Helpers shared by the export and predict tests (imported as ``test_export_helpers``), and their check."""
import numpy as np

from tinyconv import seed_cnn
from tinyconv.checkpoint import save_checkpoint
from tinyconv.data.resize import RESIZE_POLICY

ATTRS = ["Eyeglasses", "Male", "Smiling"]


def trained_like_model(H=54, W=44, seed=0):
    """seed_cnn with random BatchNorm statistics and affine parameters, so folding really matters."""
    model = seed_cnn(input_shape=(3, H, W), seed=seed)
    rng = np.random.default_rng(seed + 100)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNorm2D":
            c = layer.channels
            layer.params["gamma"][:] = rng.uniform(0.5, 1.5, c)
            layer.params["beta"][:] = rng.normal(0, 0.3, c)
            layer.buffers["running_mean"][:] = rng.normal(0, 0.3, c)
            layer.buffers["running_var"][:] = rng.uniform(0.2, 2.0, c)
    model.layers[-1].params["b"][:] = rng.normal(0, 0.5, 3)
    return model


def make_run(runs_dir, name="run-a", H=54, W=44, seed=0, synthetic=True, val_loss=None, best_epoch=3):
    """Write runs_dir/name/checkpoints/best.h5 (+ config.json) as the training loop does; return (run_dir, model).
    ``val_loss``: the best validation loss recorded in the meta (the training loop always records one)."""
    model = trained_like_model(H, W, seed)
    run_dir = runs_dir / name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text('{"name": "%s", "config": {"seed": %d}}' % (name, seed))
    meta = {"model": model.config, "attributes": ATTRS, "image_size": [H, W], "resize_policy": RESIZE_POLICY,
            "synthetic": synthetic, "run_dir": str(run_dir), "schedule": "plateau", "epoch": 3,
            "tinyconv_version": "0.1.0", "data_source": "synthetic:test"}
    if val_loss is not None:
        meta.update(best_val_loss=val_loss, best_epoch=best_epoch)
    state = {"meta": meta, "model": model.state_dict(), "optimizer": {"t": 3}, "schedule": {},
             "rng": {}, "progress": {"epoch": 3}, "metrics": []}
    save_checkpoint(run_dir / "checkpoints" / "best.h5", state, meta=meta)
    return run_dir, model


def face_images(n, H, W, seed=0):
    """Realistic-looking uint8 (n, H, W, 3) images: the synthetic face painter, through the resize policy."""
    from tinyconv.data.resize import resize_to_model
    from tinyconv.data.synthetic import draw_face
    rng = np.random.default_rng(seed)
    faces = [draw_face(rng, male=i % 2 == 0, glasses=i % 3 == 0, smiling=i % 2 == 1, blurry=False)[0]
             for i in range(n)]
    return np.stack([resize_to_model(f, (H, W)) for f in faces])


def test_make_run_writes_a_loadable_checkpoint(tmp_path):
    from tinyconv.export.source import find_checkpoint, load_trained
    run_dir, model = make_run(tmp_path)
    ckpt = find_checkpoint(run_dir)
    assert ckpt == run_dir / "checkpoints" / "best.h5"
    loaded, meta = load_trained(ckpt)
    assert meta["attributes"] == ATTRS and meta["image_size"] == [54, 44]
    x = np.random.default_rng(0).random((2, 3, 54, 44), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
