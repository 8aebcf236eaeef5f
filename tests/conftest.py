import random

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
