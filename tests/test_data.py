"""Data: the built-in digits, CIFAR from its python-format folder, ImageFolder, splits, bad paths."""
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from se_nas.nn.data import DataError, TensorData, _crop_flip, load_data, stratified_split, stratified_take
from se_nas.design.recipe import Recipe


def _labels(ds):
    return [int(ds[i][1]) for i in range(len(ds))]


# --- splits -----------------------------------------------------------------------------------------
def test_stratified_split_is_a_disjoint_per_class_partition():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 7 + [3] * 1)
    kept, held = stratified_split(labels, 0.2, seed=3)
    assert set(kept).isdisjoint(held) and sorted(np.concatenate([kept, held])) == list(range(len(labels)))
    for c, n in Counter(labels.tolist()).items():
        assert (labels[held] == c).sum() == round(0.2 * n)
    again = stratified_split(labels, 0.2, seed=3)
    assert all((a == b).all() for a, b in zip(again, (kept, held)))
    other = stratified_split(labels, 0.2, seed=4)
    assert not np.array_equal(other[1], held)


@pytest.mark.parametrize("n", [1, 4, 9, 10, 57, 88])
def test_stratified_take_is_balanced(n):
    labels = np.array([0] * 50 + [1] * 30 + [2] * 8)
    idx = stratified_take(labels, n)
    assert len(idx) == n == len(set(idx.tolist()))
    counts = Counter(labels[idx].tolist())
    for c, total in Counter(labels.tolist()).items():
        assert abs(counts.get(c, 0) - n * total / len(labels)) <= 1.0 + 1e-9


# --- digits -----------------------------------------------------------------------------------------
def test_digits_shapes_split_and_values_match_sklearn():
    d = load_digits()
    data = load_data(Recipe(image_size=8))
    assert data.name == "digits" and data.num_classes == 10
    per_class = Counter(d.target.tolist())
    assert len(data.val) == sum(round(0.2 * n) for n in per_class.values())
    assert len(data.train) + len(data.val) == len(d.target)
    x, y = data.train[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    # Stratified: each class's share of the validation split is its share of the whole set (within 1).
    val_counts = Counter(_labels(data.val))
    for c, n in per_class.items():
        assert abs(val_counts[c] - 0.2 * n) <= 1
    # Normalisation uses the training split only: its mean is 0 and std 1; channels are copies.
    xs = data.train.images
    assert torch.equal(xs[:, 0], xs[:, 1]) and torch.equal(xs[:, 0], xs[:, 2])
    assert abs(float(xs[:, 0].mean())) < 1e-4 and abs(float(xs[:, 0].std()) - 1) < 1e-3
    # Every image is the same affine map of an sklearn image with the same label (no pixel is lost).
    raw = torch.tensor(d.images, dtype=torch.float32).div(16).flatten(1)
    ours = torch.cat([data.train.images, data.val.images])[:, 0].flatten(1)
    ours_y = torch.cat([data.train.labels, data.val.labels])

    def standardise(a):
        return (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True)

    dist, j = torch.cdist(standardise(ours), standardise(raw), compute_mode="donot_use_mm_for_euclid_dist").min(1)
    assert float(dist.max()) < 1e-3
    assert torch.equal(torch.tensor(d.target)[j], ours_y)
    scale = ours.std(1) / raw[j].std(1)
    assert float(scale.max() - scale.min()) < 1e-3  # one normalisation for all images
    assert Counter(ours_y.tolist()) == per_class


def test_digits_resize_matches_bilinear_interpolate_and_is_deterministic():
    a = load_data(Recipe(image_size=16, seed=0))
    b = load_data(Recipe(image_size=16, seed=123))  # the trial seed does not change the split
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.images, b.val.images)
    small = load_data(Recipe(image_size=8))
    ref = F.interpolate(small.train.images[:5], size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(a.train.batch(torch.arange(5))[0], ref)
    assert a.train[0][0].shape == (3, 16, 16) and a.val[0][0].shape == (3, 16, 16)


def test_digits_memory_does_not_grow_with_image_size():
    # Held at 8x8 and resized per batch: the largest allowed size holds 1.4 MB, not 23 GB of copies.
    big = load_data(Recipe(image_size=1024, max_train_samples=100))
    assert big.train.images.shape[1:] == big.val.images.shape[1:] == (3, 8, 8)
    x, _ = big.val.batch(torch.arange(2))
    assert x.shape == (2, 3, 1024, 1024)


def test_digits_max_train_samples_is_a_stratified_subset():
    full = load_data(Recipe(image_size=8))
    capped = load_data(Recipe(image_size=8, max_train_samples=200))
    assert len(capped.train) == 200 and len(capped.val) == len(full.val)
    counts = Counter(_labels(capped.train))
    full_counts = Counter(_labels(full.train))
    for c, n in full_counts.items():
        assert abs(counts[c] - 200 * n / len(full.train)) <= 1
    # A subset: every capped image is one of the full training images.
    flat = {tuple(v.tolist()) for v in full.train.images[:, 0].flatten(1)}
    assert all(tuple(v.tolist()) in flat for v in capped.train.images[:, 0].flatten(1))


# --- augmentation -------------------------------------------------------------------------------------
def test_crop_flip_outputs_are_crops_of_the_padded_input():
    torch.manual_seed(0)
    x = torch.randn(12, 3, 6, 6)
    out = _crop_flip(x, 2)
    xp = F.pad(x, (2, 2, 2, 2))
    seen_flip = seen_shift = False
    for i in range(len(x)):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(xp[i, :, dy:dy + 6, dx:dx + 6]))]
        assert matches, f"sample {i} is not a crop (or flipped crop) of its padded input"
        seen_flip |= any(f for _, _, f in matches) and not any(not f for _, _, f in matches)
        seen_shift |= all((dy, dx) != (2, 2) for dy, dx, _ in matches)
    assert seen_flip and seen_shift


# --- CIFAR --------------------------------------------------------------------------------------------
def _write_cifar10(root, per_batch=20):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    everything = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(per_batch)]
        with open(root / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * per_batch}, f)
        if name != "test_batch":
            everything.append((data, labels))
    return np.concatenate([d for d, _ in everything]), np.concatenate([l for _, l in everything])


def test_cifar10_python_folder_loads_with_holdout(tmp_path):
    data, labels = _write_cifar10(tmp_path / "cifar-10-batches-py")
    for where in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the folder or its parent
        b = load_data(Recipe(dataset="cifar10", data_dir=str(where), image_size=32))
        assert b.num_classes == 10 and b.name == "cifar10"
        assert len(b.train) == 90 and len(b.val) == 10  # 10% of each class's 10 images
        assert sorted(_labels(b.val)) == list(range(10))
    # Validation images are the stored pixels, normalised, not augmented; CHW order from the pickle.
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    raw = torch.from_numpy(data).float().div(255).view(-1, 3, 32, 32)
    for i in range(len(b.val)):
        x, y = b.val[i]
        pix = x * std + mean
        j = int(((raw - pix).abs().flatten(1).max(1).values).argmin())
        assert torch.allclose(raw[j], pix, atol=1e-5) and labels[j] == y
    # Training images are augmented (shape kept) and the test batch is never used.
    x, _ = b.train[0]
    assert x.shape == (3, 32, 32)
    assert b.train.augment and not b.val.augment


def test_cifar100_train_file_with_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (1000, 3072), dtype=np.uint8)
    with open(root / "train", "wb") as f:
        pickle.dump({b"data": data, b"fine_labels": [i % 100 for i in range(1000)],
                     b"coarse_labels": [i % 20 for i in range(1000)]}, f)
    b = load_data(Recipe(dataset="cifar100", data_dir=str(tmp_path), image_size=16, max_train_samples=300))
    assert b.num_classes == 100 and len(b.val) == 100 and len(b.train) == 300
    assert b.train[0][0].shape == (3, 16, 16) and b.val[0][0].shape == (3, 16, 16)
    # Stored at 32x32 uint8, resized per batch: a large image_size does not multiply memory.
    assert b.train.images.dtype == torch.uint8 and b.train.images.shape[-2:] == (32, 32)
    x, _ = b.val.batch(torch.arange(3))
    raw = b.val.images[:3].float() / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    ref = F.interpolate((raw - mean) / std, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(x, ref, atol=1e-5)


def test_cifar_bad_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist.*data_batch_1"):
        load_data(Recipe(dataset="cifar10", data_dir=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"not a CIFAR python-format folder.*found: \['readme.txt'\]"):
        load_data(Recipe(dataset="cifar10", data_dir=str(tmp_path / "empty")))
    bad = tmp_path / "bad"
    _write_cifar10(bad)
    (bad / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR python-format batch"):
        load_data(Recipe(dataset="cifar10", data_dir=str(bad)))
    with open(bad / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(DataError, match=r"shape \(N, 3072\)"):
        load_data(Recipe(dataset="cifar10", data_dir=str(bad)))


class _Payload:
    """What a hostile batch holds: unpickling it calls ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["data", "labels", "top"])
def test_a_cifar_batch_that_would_run_code_is_refused_and_nothing_runs(tmp_path, where):
    """Issue 24: CIFAR's format is pickle, and a data_batch_1 with a __reduce__ payload ran. Only numpy
    arrays, dicts, lists and bytes are unpickled; anything else is refused in one line naming the file."""
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar10(root)
    marker = tmp_path / "ran"
    d = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4}
    if where == "top":
        d = _Payload(marker)
    else:
        d[b"data" if where == "data" else b"labels"] = _Payload(marker)
    with open(root / "data_batch_2", "wb") as f:
        pickle.dump(d, f)
    with pytest.raises(DataError, match=r"data_batch_2 is not a CIFAR python-format batch .*asks to load "
                                        r"io\.open; a CIFAR batch holds only numpy arrays") as e:
        load_data(Recipe(dataset="cifar10", data_dir=str(tmp_path)))
    assert not marker.exists() and "\n" not in str(e.value)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_cifar_batches_load_under_every_pickle_protocol(tmp_path, protocol):
    """The restricted unpickler still reads real batches: numpy arrays at protocols 2 (numpy's
    _reconstruct, and _codecs for bytes), 4 and 5 (_frombuffer), with numpy scalars among the labels,
    and a batch pickled under numpy 1's module names, as the published files are."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(2)
    for i in range(1, 6):
        data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        labels = [np.int64(j % 10) if j % 2 else j % 10 for j in range(20)]
        blob = pickle.dumps({b"batch_label": b"training batch", b"data": data, b"labels": labels,
                             b"filenames": [b"x.png"] * 20}, protocol=protocol)
        if protocol == 2:  # as numpy 1 (and the published CIFAR files) name the reconstruction
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (root / f"data_batch_{i}").write_bytes(blob)
    b = load_data(Recipe(dataset="cifar10", data_dir=str(tmp_path), image_size=32))
    assert len(b.train) + len(b.val) == 100 and b.num_classes == 10


# --- ImageFolder --------------------------------------------------------------------------------------
def _write_pngs(root, classes=("cat", "dog", "eel"), n=10):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_imagefolder_with_train_and_val(tmp_path):
    _write_pngs(tmp_path / "train")
    _write_pngs(tmp_path / "val", n=3)
    b = load_data(Recipe(dataset="imagefolder", data_dir=str(tmp_path), image_size=16))
    assert b.num_classes == 3 and len(b.train) == 30 and len(b.val) == 9
    x, y = b.val[0]
    assert x.shape == (3, 16, 16) and y == 0
    assert sorted(set(_labels(b.val))) == [0, 1, 2]


def test_imagefolder_single_folder_holds_out_ten_percent(tmp_path):
    _write_pngs(tmp_path / "imgs")
    b = load_data(Recipe(dataset="imagefolder", data_dir=str(tmp_path / "imgs"), image_size=12, augment=False))
    assert b.num_classes == 3 and len(b.train) == 27 and len(b.val) == 3
    assert sorted(_labels(b.val)) == [0, 1, 2]
    assert b.train[0][0].shape == (3, 12, 12)


def test_imagefolder_bad_paths(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_data(Recipe(dataset="imagefolder", data_dir=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="one subfolder per class"):
        load_data(Recipe(dataset="imagefolder", data_dir=str(tmp_path / "empty")))
    _write_pngs(tmp_path / "tv" / "train")
    _write_pngs(tmp_path / "tv" / "val", classes=("cat", "dog"))
    with pytest.raises(DataError, match="same class subfolders"):
        load_data(Recipe(dataset="imagefolder", data_dir=str(tmp_path / "tv")))


def test_tensor_data_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="N labels"):
        TensorData(torch.zeros(3, 3, 4, 4), torch.zeros(2))


def _broken_torchvision(monkeypatch, tmp_path):
    """A torchvision whose import fails as a torchvision built for another torch does (a real mismatched
    pair is not installable here): the first on sys.path, any imported torchvision forgotten."""
    import sys

    fake = tmp_path / "site"
    (fake / "torchvision").mkdir(parents=True)
    (fake / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(fake))
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)


def test_a_torch_torchvision_pair_that_does_not_fit_is_one_line_naming_both(monkeypatch, tmp_path, capsys):
    # `import torchvision` raising `operator torchvision::nms does not exist` ended every ImageFolder search in a
    # 20-line traceback; now one line names both versions and a matching pair to install.
    import torch
    import yaml

    from se_nas import cli
    from se_nas.nn.data import matching_torchvision

    _write_pngs(tmp_path / "imgs")
    _broken_torchvision(monkeypatch, tmp_path)
    want = matching_torchvision(torch.__version__)
    with pytest.raises(DataError) as e:
        load_data(Recipe(dataset="imagefolder", data_dir=str(tmp_path / "imgs"), image_size=12))
    msg = str(e.value)
    assert msg.startswith(f"torch {torch.__version__} and torchvision ") and "do not work together" in msg
    assert "operator torchvision::nms does not exist" in msg and "\n" not in msg
    assert f"`pip install torch=={torch.__version__.split('+')[0]} torchvision=={want}`" in msg
    rfile = tmp_path / "r.yaml"
    rfile.write_text(yaml.safe_dump({"dataset": "imagefolder", "data_dir": str(tmp_path / "imgs"), "image_size": 12,
                                     "epochs": 1, "stem": "small", "width": 0.125}))
    assert cli.main(["train", "se_resnet50", "--recipe", str(rfile), "-o", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torchvision::nms" in err and "Traceback" not in err, err


def test_the_matching_torchvision_follows_torchvisions_table():
    from se_nas.nn.data import matching_torchvision

    assert matching_torchvision("2.4.1") == "0.19.1" and matching_torchvision("2.6.0+cu124") == "0.21.0"
    assert matching_torchvision("2.14.1+cu130") == "0.29.1" and matching_torchvision("1.13.1") is None
