"""Model files: round trips give the same outputs; damaged, edited, forged and oversized files are refused."""
import json
import os
import subprocess
import sys

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from se_nas import Arch, StageSE, build_model, count_cost
from se_nas.design.choices import GATES, POSITIONS, SQUEEZES
from se_nas.products.export import export_onnx, export_torchscript
from se_nas.products.modelfile import (
    MAX_CLASSES, ModelFileError, checksum, load_model, read_key, read_model, save_model,
)
from se_nas.products.preprocess import Preprocess


def _archs():
    """Architectures that together use every squeeze, gate and position (and stages without SE)."""
    sq, ga, po = list(SQUEEZES), list(GATES), list(POSITIONS)
    out = []
    for i in range(max(len(sq), len(ga), len(po))):
        stages = tuple(
            StageSE(reduction=[2, 4, 8, 16][(i + k) % 4], squeeze=sq[(i + k) % len(sq)],
                    gate=ga[(i + k) % len(ga)], position=po[(i + k) % len(po)])
            for k in range(4)
        )
        out.append(Arch("resnet18" if i % 2 else "resnet50", stages, stride_on="3x3" if i % 2 else "1x1",
                        se_bias=i % 3 == 0))
    out.append(Arch("resnet18", (None, StageSE(), None, StageSE(1, "max"))))
    return out


ARCHS = _archs()
W = 0.125  # narrow proxies keep the round trips fast


def _trained_looking(arch, seed=0):
    """A proxy model whose weights and BatchNorm statistics are not the initial ones."""
    torch.manual_seed(seed)
    m = build_model(arch, 7, stem="small", width=W)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m.train()
        m(torch.randn(4, 3, 8, 8))  # moves running mean/var away from 0/1
    return m.eval()


def test_choices_are_all_covered():
    used = [s for a in ARCHS for s in a.stages if s is not None]
    assert {s.squeeze for s in used} == set(SQUEEZES)
    assert {s.gate for s in used} == set(GATES)
    assert {s.position for s in used} == set(POSITIONS)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.id)
def test_round_trip_same_outputs(arch, tmp_path):
    m = _trained_looking(arch)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want = m(x)
    path = save_model(tmp_path / "m.safetensors", m, arch, num_classes=7, stem="small", width=W,
                      meta={"accuracy": 0.5, "study": "s", "trial": 3})
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.se_nas.arch == arch and loaded.se_nas.meta["trial"] == 3
    assert loaded.se_nas.meta["torch"] == torch.__version__
    with torch.no_grad():
        got = loaded(x)
    assert torch.equal(got, want)
    # buffers too (running statistics), not only parameters
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.fixture
def saved(tmp_path):
    arch = ARCHS[1]
    m = _trained_looking(arch)
    path = save_model(tmp_path / "m.safetensors", m, arch, num_classes=7, stem="small", width=W,
                      meta={"accuracy": 0.625})
    return path, m, arch


def test_flipped_weight_byte_is_a_checksum_error(saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model(path)


def test_edited_metadata_is_a_checksum_error(saved):
    path, _, _ = saved
    data = path.read_bytes()
    assert b"0.625" in data
    path.write_bytes(data.replace(b"0.625", b"0.925"))  # same length, still valid JSON
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model(path)


@pytest.mark.slow
@pytest.mark.parametrize("keep", [0.0, 0.001, 0.5, 0.999])
def test_truncated_file_is_refused(saved, keep):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match="not a readable se-nas model file"):
        load_model(path)


def test_other_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04\x95 this is a pickle, not a model" * 10)
    with pytest.raises(ModelFileError, match="not a readable"):
        load_model(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not an se-nas model"):
        load_model(other)
    with pytest.raises(FileNotFoundError, match="cannot read model file"):
        load_model(tmp_path / "missing.safetensors")
    head = json.dumps({"__metadata__": {"format": "se-nas/model@1", "arch": 5}}).encode()
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(len(head).to_bytes(8, "little") + head)
    with pytest.raises(ModelFileError, match="odd.safetensors' is not a readable.*must map names to strings"):
        load_model(odd)


def _header(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))["__metadata__"]


def _forge(path, out, tensors=None, **changes):
    """What someone editing a file on purpose does: change header fields (None deletes one) and/or
    tensors, then recompute the (unkeyed) checksum so the file is consistent again."""
    from safetensors.torch import save_file

    header = {**_header(path), **changes}
    header = {k: v for k, v in header.items() if v is not None}
    tensors = dict(read_model(path, verify=False).state_dict) if tensors is None else tensors
    header["sha256"] = checksum(header, tensors)
    save_file(tensors, str(out), metadata=header)
    return out


def test_weights_that_do_not_fit_are_named(saved, tmp_path):
    """A consistent file (valid checksum) whose tensors don't match its architecture."""
    path, _, _ = saved
    tensors = dict(read_model(path).state_dict)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    with pytest.raises(ModelFileError, match=f"weights do not fit.*missing {dropped}"):
        load_model(_forge(path, tmp_path / "bad.safetensors", tensors))


@pytest.mark.slow
def test_header_asking_for_a_huge_model_is_refused_before_allocating(saved, tmp_path):
    """A 750 KB file whose header asks for ResNet-50 at twice the width (94 M parameters, ~380 MB once
    built) is refused before anything is built: the loading process's peak memory barely moves."""
    path, _, _ = saved
    build = json.loads(_header(path)["build"])
    big = Arch("resnet50", (None,) * 4)
    asked = count_cost(big, 224, build["num_classes"], build["stem"], 2.0).params
    assert asked > 90e6
    crafted = _forge(path, tmp_path / "crafted.safetensors", arch=big.to_json(),
                     build=json.dumps({**build, "width": 2.0}))
    probe = ("import resource, sys, time\n"
             "from se_nas.products.modelfile import ModelFileError, load_model\n"
             "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "before, t = peak(), time.perf_counter()\n"
             "try:\n    load_model(sys.argv[1]); print('LOADED')\n"
             "except ModelFileError as e:\n    print('REFUSED', e)\n"
             "print('GREW_KB', peak() - before, 'SECONDS', time.perf_counter() - t)\n"
             "print('TRAINING_MODULES', [m for m in ('train', 'data', 'trial', 'study', 'search') "
             "if 'se_nas.' + m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", probe, str(crafted)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300).stdout
    assert "REFUSED" in out and f"header asks for a model of {asked:,} parameters" in out and "width=2.0" in out, out
    assert "TRAINING_MODULES []" in out, out  # loading a model file imports nothing of training
    grew_kb = int(out.split("GREW_KB ")[1].split()[0])
    assert grew_kb < 100_000, out


_PEAK_PROBE = ("import resource, sys\n"
               "from se_nas.products.modelfile import ModelFileError, load_model\n"
               "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
               "before = peak()\n"
               "try:\n    load_model(sys.argv[1]); print('LOADED')\n"
               "except ModelFileError as e:\n    print('REFUSED', e)\n"
               "print('GREW_KB', peak() - before)\n")


def _peak_of_loading(path) -> tuple[str, int]:
    """load_model in a fresh process: its output and how much its peak memory grew (KB)."""
    out = subprocess.run([sys.executable, "-c", _PEAK_PROBE, str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300).stdout
    return out, int(out.split("GREW_KB ")[1].split()[0])


@pytest.mark.slow
def test_a_huge_sparse_file_is_refused_without_reading_it(saved, tmp_path):
    """Issue 24: a 2 GB sparse file holding a 700 KB model took 2.6 GB of memory, because the whole
    file was read before its header was checked. A 1 GiB one (sparse: no disk) is refused unread."""
    path, _, _ = saved
    model_bytes = path.stat().st_size
    os.truncate(path, 1 << 30)
    out, grew_kb = _peak_of_loading(path)
    assert "REFUSED" in out and f"declare {model_bytes - 8 - int.from_bytes(path.open('rb').read(8), 'little'):,} " \
        f"bytes but" in out, out
    assert grew_kb < 100_000, out


@pytest.mark.slow
def test_tensors_declared_beyond_the_architecture_are_refused_before_reading(saved, tmp_path):
    """A consistent-looking file that declares a 1 GiB extra tensor (sparse, so no disk): its header
    and sizes add up, but the architecture holds far fewer values, so nothing is read."""
    path, _, _ = saved
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    head = json.loads(data[8:8 + n])
    end = max(t["data_offsets"][1] for k, t in head.items() if k != "__metadata__")
    head["junk"] = {"dtype": "F32", "shape": [1 << 28], "data_offsets": [end, end + (1 << 30)]}
    raw = json.dumps(head).encode()
    crafted = tmp_path / "crafted.safetensors"
    with open(crafted, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    os.truncate(crafted, 8 + len(raw) + end + (1 << 30))
    out, grew_kb = _peak_of_loading(crafted)
    assert "REFUSED" in out and "declares 268," in out and "refusing to read them" in out, out
    assert grew_kb < 100_000, out


def test_a_header_length_above_the_bound_is_refused(tmp_path):
    p = tmp_path / "h.safetensors"
    with open(p, "wb") as f:
        f.write((64 << 20).to_bytes(8, "little"))
    os.truncate(p, 8 + (64 << 20))
    with pytest.raises(ModelFileError, match=r"header claims 67,108,864 bytes; at most 16,777,216 are allowed"):
        load_model(p)


@pytest.mark.parametrize("field,value,message", [
    ("build", {"num_classes": MAX_CLASSES + 1}, f"num_classes={MAX_CLASSES + 1} is outside the allowed 1..{MAX_CLASSES}"),
    ("build", {"width": 8.0}, r"width multiplier must be a number in \(0, 4\], got width=8.0"),
    ("build", {"stem": "huge"}, "unknown stem 'huge'"),
    ("arch", "[" * 200_000 + "]" * 200_000, "header arch is 400000 characters, more than the allowed 100000"),
    ("arch", "[" * 50_000 + "]" * 50_000, "malformed header"),  # deep nesting: one line, no RecursionError
    ("preprocess", {"image_size": 100_000, "mean": [0.0] * 3, "std": [1.0] * 3},
     r"preprocess image_size must be an integer in \[1, 4096\], got image_size=100000"),
    ("role", "oracle", "header role='oracle'; allowed: proxy, deployment"),
])
def test_header_bounds_are_one_line_naming_file_key_value_and_limit(saved, tmp_path, field, value, message):
    path, _, _ = saved
    if field == "build":
        value = json.dumps({**json.loads(_header(path)["build"]), **value})
    elif isinstance(value, dict):
        value = json.dumps(value)
    bad = _forge(path, tmp_path / "bad.safetensors", **{field: value})
    with pytest.raises(ModelFileError, match=message) as e:
        load_model(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


KEY = b"0123456789abcdef-a-test-key"


def test_signed_file_verifies_with_its_key_and_loads_without_one(tmp_path):
    arch = ARCHS[1]
    m = _trained_looking(arch)
    path = save_model(tmp_path / "s.senas", m, arch, num_classes=7, stem="small", width=W, key=KEY)
    assert load_model(path, key=KEY).se_nas.authenticated
    assert load_model(path, key=KEY.decode()).se_nas.authenticated  # a str key is its UTF-8 bytes
    assert not load_model(path).se_nas.authenticated  # no key: checksum checked, signature not
    with pytest.raises(ModelFileError, match="signature does not match.*another key"):
        load_model(path, key=b"another key, also 16+ bytes")
    unsigned = save_model(tmp_path / "u.senas", m, arch, num_classes=7, stem="small", width=W)
    with pytest.raises(ModelFileError, match="is not signed, and a key was given"):
        load_model(unsigned, key=KEY)
    with pytest.raises(ModelFileError, match="is not signed"):  # stripping the signature does not help
        load_model(_forge(path, tmp_path / "stripped.senas", hmac_sha256=None), key=KEY)
    with pytest.raises(ValueError, match="at least 16 bytes, got 5 bytes"):
        save_model(tmp_path / "k.senas", m, arch, num_classes=7, stem="small", width=W, key=b"short")


def test_forged_accuracy_and_edited_architecture_are_caught_with_the_key_only(tmp_path):
    arch = ARCHS[1]
    m = _trained_looking(arch)
    path = save_model(tmp_path / "s.senas", m, arch, num_classes=7, stem="small", width=W,
                      meta={"accuracy": 0.625}, key=KEY)
    meta = json.loads(_header(path)["meta"])
    forged = _forge(path, tmp_path / "forged.senas", meta=json.dumps({**meta, "accuracy": 0.925}))
    # an edit with the same parameter shapes: another gate in the first SE stage
    i = next(k for k, s in enumerate(arch.stages) if s is not None)
    other = next(g for g in GATES if g != arch.stages[i].gate)
    stages = tuple(dataclasses.replace(s, gate=other) if k == i else s for k, s in enumerate(arch.stages))
    edited = _forge(path, tmp_path / "edited.senas", arch=dataclasses.replace(arch, stages=stages).to_json())
    # without the key both load (the unkeyed checksum was recomputed): the README's honest claim
    assert load_model(forged).se_nas.meta["accuracy"] == 0.925
    assert load_model(edited).se_nas.arch.stages[i].gate == other
    for bad in (forged, edited):
        with pytest.raises(ModelFileError, match="signature does not match"):
            load_model(bad, key=KEY)


def test_key_file(tmp_path):
    (tmp_path / "k").write_bytes(KEY + b"\n")
    assert read_key(tmp_path / "k") == KEY
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="key file .*short' holds 3 bytes; a signing key needs at least 16"):
        read_key(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="cannot read key file"):
        read_key(tmp_path / "missing")


def test_model_files_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_model(tmp_path / "m.senas", _trained_looking(ARCHS[1]), ARCHS[1], num_classes=7, stem="small",
                          width=W)
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_save_never_follows_a_link_planted_at_the_temporary_name_or_the_target(tmp_path):
    """A link at the old, predictable ``<out>.tmp`` made save_model overwrite the file it pointed to."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "m.senas.tmp").symlink_to(victim)
    path = save_model(tmp_path / "m.senas", _trained_looking(ARCHS[1]), ARCHS[1], num_classes=7, stem="small", width=W)
    assert victim.read_text() == "keep me" and not path.is_symlink()
    assert load_model(path).se_nas.arch == ARCHS[1]
    (tmp_path / "linked.senas").symlink_to(victim)
    with pytest.raises(ValueError, match="linked.senas' is a symbolic link"):
        save_model(tmp_path / "linked.senas", _trained_looking(ARCHS[1]), ARCHS[1], num_classes=7, stem="small", width=W)
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linked.senas", "m.senas", "m.senas.tmp", "victim"]


def test_preprocess_is_stored_and_applied(tmp_path):
    pre = Preprocess(8, (0.5,), (0.25,), pixel_max=16.0, channels=1)
    path = save_model(tmp_path / "m.senas", _trained_looking(ARCHS[1]), ARCHS[1], num_classes=7, stem="small",
                      width=W, preprocess=pre, role="proxy", trained=True)
    info = load_model(path).se_nas
    assert (info.preprocess, info.role, info.trained) == (pre, "proxy", True)
    raw = torch.arange(16.0).reshape(4, 4)  # one grayscale image, values 0..15
    x = info.preprocess(raw)
    want = F.interpolate(((raw / 16 - 0.5) / 0.25)[None, None], size=(8, 8), mode="bilinear", align_corners=False)
    assert x.shape == (1, 3, 8, 8) and torch.equal(x, want.expand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"images must be .*channels first\), got shape \(2, 3, 4, 4\)"):
        info.preprocess(torch.zeros(2, 3, 4, 4))


def test_centre_crop_preprocess_matches_torchvision():
    from torchvision import transforms as T

    pre = Preprocess(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize_to=18)
    img = torch.randint(0, 256, (3, 40, 29), dtype=torch.uint8)
    # float before resizing: torchvision (like PIL) rounds a resized uint8 image back to uint8
    tv = T.Compose([T.ConvertImageDtype(torch.float32), T.Resize(18, antialias=True), T.CenterCrop(16),
                    T.Normalize(pre.mean, pre.std)])
    torch.testing.assert_close(pre(img), tv(img)[None], atol=1e-5, rtol=1e-5)


def test_save_refuses_a_model_of_another_architecture(tmp_path):
    m = build_model(ARCHS[0], 7, stem="small", width=W)
    with pytest.raises(ValueError, match="does not match architecture"):
        save_model(tmp_path / "x.safetensors", m, ARCHS[1], num_classes=7, stem="small", width=W)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [ARCHS[1], ARCHS[3]], ids=lambda a: a.id)
def test_deployment_formats_give_the_same_outputs(arch, tmp_path):
    import onnx
    from onnx.reference import ReferenceEvaluator

    m = _trained_looking(arch)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = m(x).numpy()
    ts = torch.jit.load(str(export_torchscript(m, tmp_path / "m.pt", 8)))
    with torch.no_grad():
        np.testing.assert_allclose(ts(x).numpy(), want, rtol=1e-5, atol=1e-5)
    proto = onnx.load(str(export_onnx(m, tmp_path / "m.onnx", 8)))
    onnx.checker.check_model(proto)
    got = ReferenceEvaluator(proto).run(None, {"images": x.numpy()})[0]  # batch 2: dynamic axis works
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
