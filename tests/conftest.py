import random

import pytest

from se_nas.arch import Arch, StageSE
from se_nas.choices import BACKBONES, GATES, POSITIONS, SQUEEZES


def random_arch(rng: random.Random, backbone: str | None = None) -> Arch:
    """A random architecture: every axis drawn uniformly, each stage off with probability 1/4."""
    backbone = backbone or rng.choice(list(BACKBONES))
    n = len(BACKBONES[backbone].depths)
    stages = tuple(
        None
        if rng.random() < 0.25
        else StageSE(
            reduction=rng.choice([1, 2, 3, 4, 8, 16, 32, 64]),
            squeeze=rng.choice(list(SQUEEZES)),
            gate=rng.choice(list(GATES)),
            position=rng.choice(list(POSITIONS)),
        )
        for _ in range(n)
    )
    return Arch(backbone, stages, stride_on=rng.choice(["1x1", "3x3"]), se_bias=rng.random() < 0.5)


@pytest.fixture
def rng():
    return random.Random(0)
