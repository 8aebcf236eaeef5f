"""Model files: round trips give the same outputs, and damaged or edited files are refused."""
import json

import numpy as np
import pytest
import torch

from se_nas import Arch, StageSE, build_model
from se_nas.choices import GATES, POSITIONS, SQUEEZES
from se_nas.export import (
    ModelFileError, checksum, export_onnx, export_torchscript, load_model, read_model, save_model,
)


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


def test_weights_that_do_not_fit_are_named(saved, tmp_path):
    """A consistent file (valid checksum) whose tensors don't match its architecture."""
    from safetensors.torch import save_file

    path, _, _ = saved
    mf = read_model(path)
    tensors = dict(mf.state_dict)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))["__metadata__"]
    header["sha256"] = checksum(header, tensors)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=header)
    with pytest.raises(ModelFileError, match=f"weights do not fit.*{dropped}"):
        load_model(bad)


def test_save_refuses_a_model_of_another_architecture(tmp_path):
    m = build_model(ARCHS[0], 7, stem="small", width=W)
    with pytest.raises(ValueError, match="does not match architecture"):
        save_model(tmp_path / "x.safetensors", m, ARCHS[1], num_classes=7, stem="small", width=W)


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
