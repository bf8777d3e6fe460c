"""FaceTask's extension points: extra objectives on the embeddings and per-sample extras from the loader."""

import pytest
import torch

from facelab.config import config_from_dict
from facelab.errors import FacelabError
from facelab.losses.base import Objective
from facelab.train.task import FaceTask


class MeanNorm(Objective):
    """A toy objective: weight · mean |x|, and it records the extras it was given."""

    def __init__(self, weight: float, name: str = "norm") -> None:
        super().__init__()
        self.weight, self.name, self.seen = weight, name, None

    def forward(self, embeddings, labels, **extras):
        self.seen = extras
        return {self.name: self.weight * embeddings.norm(dim=1).mean()}


def _task():
    cfg = config_from_dict({"model": {"backbone": "tiny", "embedding_size": 8},
                            "head": {"margin": "cosface", "kwargs": {"s": 8.0}}})
    torch.manual_seed(0)
    return FaceTask(cfg, 5, {"size": 112}).eval()


def test_objective_terms_join_the_loss_and_see_the_extras():
    task = _task()
    images, labels = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8), torch.tensor([0, 1, 2, 3])
    plain = task(images, labels).losses
    task.objectives["norm"] = MeanNorm(0.5)
    hard = torch.tensor([True, False, True, False])
    out = task(images, labels, hard=hard)
    assert out.correct is None  # not tracked without Adaptive Data Sampling
    losses = out.losses
    assert torch.equal(task.objectives["norm"].seen["hard"], hard)
    assert losses["ce"].item() == pytest.approx(plain["ce"].item())
    assert losses["loss"].item() == pytest.approx(plain["loss"].item() + losses["norm"].item(), rel=1e-6)
    assert losses["norm"].item() > 0


def test_a_term_name_may_not_clash():
    task = _task()
    task.objectives["bad"] = MeanNorm(1.0, name="ce")
    images, labels = torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8), torch.tensor([0, 1])
    with pytest.raises(FacelabError, match="'ce' of objective 'bad'"):
        task(images, labels)
