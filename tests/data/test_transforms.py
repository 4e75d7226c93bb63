"""ToNormalizedTensor: the same float32 values as the torch arithmetic it replaced, also after
it was pickled for a spawned process."""

from __future__ import annotations

from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers the tensor reductions: shared memory)

from osteolightning.data.transforms import ToNormalizedTensor

IMAGE = np.random.default_rng(0).integers(0, 256, (37, 41), dtype=np.uint8)


def _reference(t: ToNormalizedTensor) -> torch.Tensor:
    x = torch.from_numpy(IMAGE).float().div_(255.0).unsqueeze(0).expand(t.in_chans, -1, -1)
    return (x - t.mean) / t.std


@pytest.mark.parametrize(
    ("mean", "std", "chans"),
    [([0.449], [0.226], 1), ([0.5], [0.5], 3), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 3)],
)
def test_values_equal_the_torch_arithmetic(mean, std, chans):
    t = ToNormalizedTensor(mean, std, chans)
    out = t(IMAGE)
    assert out.shape == (chans, 37, 41) and out.dtype == torch.float32
    assert torch.equal(out, _reference(t))


def test_pickling_for_a_spawned_process_leaves_it_intact():
    """Pickling moves the tensors' storage into shared memory and frees the old one; the
    NumPy constants must not be views of it (they read freed memory: NaN in DDP ranks)."""
    t = ToNormalizedTensor([0.449], [0.226], 1)
    expected = t(IMAGE).clone()
    ForkingPickler.dumps(t)
    clobber = [np.full(4096, 1e30, np.float32) for _ in range(256)]  # reuse freed memory
    assert torch.equal(t(IMAGE), expected) and len(clobber) == 256
