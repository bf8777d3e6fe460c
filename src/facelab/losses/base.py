"""The objective interface (facelab.losses): a loss term on the embeddings beside the head."""

from torch import Tensor, nn


class Objective(nn.Module):
    """objective(embeddings [B, d], labels [B], **extras) -> {term: weighted scalar}.

    `set_step` is called with the training step before every forward; an objective whose terms
    follow a schedule keeps it, the others ignore it."""

    def set_step(self, step: int) -> None:
        """The training step (ignored unless the objective follows a schedule)."""

    def forward(self, embeddings: Tensor, labels: Tensor, **extras: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError
