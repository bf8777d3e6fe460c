"""to_input with scalar mean/std (Python floats, no device copy) equals the per-channel tensor
formula."""

import torch

from facelab.data.transforms import PREPROCESS_DEFAULT, to_input


def test_scalar_and_channel_forms_agree_bitwise():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    for mean, std in ((0.5, 0.5), (0.485, 0.229), (0.3, 0.7)):
        scalar = to_input(images, {**PREPROCESS_DEFAULT, "mean": mean, "std": std})
        channels = to_input(images, {**PREPROCESS_DEFAULT, "mean": [mean] * 3, "std": [std] * 3})
        m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        reference = (images.float() / 255.0 - m) / s  # the float32 formula, written out
        assert torch.equal(scalar, channels) and torch.equal(scalar, reference)
