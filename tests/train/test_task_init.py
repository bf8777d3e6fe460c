"""FaceTask's config check (check_names builds a probe head) draws nothing from torch's generator: the
run's weights are those the seed gives the backbone and the head built alone."""

import torch

from facelab.config import config_from_dict
from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.heads import build_head
from facelab.model import build_model
from facelab.train.task import FaceTask, check_names


def test_the_config_check_leaves_the_seeded_draws_alone():
    cfg = config_from_dict({"model": {"backbone": "tiny", "embedding_size": 16},
                            "head": {"margin": "arcface"}})
    torch.manual_seed(0)
    task = FaceTask(cfg, 10, {**PREPROCESS_DEFAULT, "size": 112})
    torch.manual_seed(0)
    backbone = build_model(cfg)
    head = build_head("arcface", 16, 10, classifier_kwargs={"seed": cfg.seed})
    for got, want in ((task.backbone, backbone), (task.head, head)):
        a, b = got.state_dict(), want.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same draws, same path
    torch.manual_seed(0)
    check_names(cfg)
    after = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(4))
