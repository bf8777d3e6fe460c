"""GroupFace's group-classification term (Kim et al., CVPR 2020, Sec. 3.2) as an objective.

The GroupFace wrapper (facelab.backbones.groupface) computes the term during its training forward,
from group probabilities only it sees; this objective hands that term to the loss dict.
"""

from torch import Tensor

from facelab.backbones.groupface import GroupFace
from facelab.losses.base import Objective


class GroupFaceTerm(Objective):
    """objective(embeddings, labels) -> {"groupface": λ·CE} of the model's last training
    forward."""

    def __init__(self, model: GroupFace) -> None:
        super().__init__()
        # a reference, not a submodule: the model's parameters are saved and optimised as the
        # backbone
        object.__setattr__(self, "model", model)

    def forward(self, embeddings: Tensor, labels: Tensor, **extras: Tensor) -> dict[str, Tensor]:
        return self.model.aux_losses()
