import contextlib
import os
import random
import subprocess

import pytest

from se_nas.design.arch import Arch, StageSE
from se_nas.design.choices import GATES, SQUEEZES
from se_nas.design.backbones import BACKBONES


def random_arch(rng: random.Random, backbone: str | None = None, gates: tuple[str, ...] = tuple(GATES)) -> Arch:
    """A random design of ``backbone`` (else of a random family): every axis drawn uniformly over the
    choices the family has (its insertion points, its stride forms), each stage off with probability 1/4."""
    backbone = backbone or rng.choice(list(BACKBONES))
    spec = BACKBONES[backbone]
    stages = tuple(
        None
        if rng.random() < 0.25
        else StageSE(
            reduction=rng.choice([1, 2, 3, 4, 8, 16, 32, 64]),
            squeeze=rng.choice(list(SQUEEZES)),
            gate=rng.choice(gates),
            position=rng.choice(spec.positions),
        )
        for _ in spec.depths
    )
    return Arch(backbone, stages, stride_on=rng.choice(spec.stride_forms), se_bias=rng.random() < 0.5)


@pytest.fixture
def rng():
    return random.Random(0)


@pytest.fixture
def tmpfs():
    """``tmpfs(path, size, fill=..., read_only=..., full=...)`` mounts a real tmpfs at ``path`` for this
    test: ``fill(path)`` puts files there first, then it is remounted read-only or filled to the last
    byte (a file ``filler``). Skips the test where this process may not mount (not root in a container)."""
    mounted = []

    def mount(path, size="64k", fill=None, read_only=False, full=False):
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                               capture_output=True).returncode != 0:
            pytest.skip("needs a tmpfs mount (root, with mount allowed)")
        mounted.append(path)
        if fill is not None:
            fill(path)
        if full:
            with open(path / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def closed_study_copy():
    """``closed_study_copy(src_db, dst_db)``: a copy of a SQLite study as a finished search leaves it, in
    WAL mode without its ``-wal`` and ``-shm`` files (a study still open here has them)."""
    import sqlite3

    def copy(src, dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(src)) as a, contextlib.closing(sqlite3.connect(dst)) as b:
            a.backup(b)
            b.execute("PRAGMA journal_mode=WAL")
        assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]
        return dst

    return copy
