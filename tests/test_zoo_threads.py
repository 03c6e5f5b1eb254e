"""A zoo reference is the same classifier on every CPU machine, whatever torch's thread count."""

from __future__ import annotations

import torch

from leakaudit.zoo import ReferenceSpec, split_members, train_classifier

# a convolutional spec: its sums split over threads, so an unpinned build differs in its weights (by ~1e-3 here)
SPEC = ReferenceSpec(name="threads", dataset="digits", train_per_class=5, holdout_per_class=2, arch="cnn",
                     optimizer="adam", lr=3e-3, epochs=15, batch_size=25, seed=0)


def _weights_trained_with(threads: int) -> torch.Tensor:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, _ = train_classifier(SPEC, split_members(SPEC))
        assert torch.get_num_threads() == threads, "the caller's thread count is put back"
    finally:
        torch.set_num_threads(previous)
    return torch.cat([t.flatten() for t in model.state_dict().values() if t.is_floating_point()])


def test_a_reference_trains_to_the_same_weights_with_one_thread_or_two() -> None:
    assert torch.equal(_weights_trained_with(1), _weights_trained_with(2))
