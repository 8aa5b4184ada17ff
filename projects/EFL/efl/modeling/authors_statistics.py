"""The EFL authors' gradient statistics, reproduced for reproduction studies (off by
default): their collector (``up/utils/general/hook_helper.py`` 567-599, ``collect_grad`` in
their ``efl.py`` 98-118) reshapes the cls predictor's gradient as anchor-major while their
head is class-major, so with A > 1 anchors per location the per-class sums mix classes.
Their released A = 2 models were trained with these statistics; the paper's are what
:class:`EqualizedFocalLoss` accumulates by itself. Torch alone."""

import torch

__all__ = ["as_authors_read_it", "AuthorsStatistics"]


def as_authors_read_it(grad: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """(M, K) per-anchor gradients, rows (image, level, y, x, a) as Detectron2 orders them
    -> what their collector attributes to (row, class): within each location, the A x K
    block read in class-major order (channel c * A + a) and re-read as anchor-major."""
    m, k = grad.shape
    block = grad.reshape(m // num_anchors, num_anchors, k)  # (locations, A, K), ours
    return block.transpose(1, 2).reshape(m, k)  # channel order c * A + a, cut into rows of K


class AuthorsStatistics:
    """A statistics reader for :meth:`efl.losses.GradientStatisticsLoss.read_statistics_with`
    (the loss's one gradient tap calls it in backward): the per-class gradient magnitudes as
    the authors' collector computes them, for ``num_anchors`` anchors per location."""

    def __init__(self, num_anchors: int):
        if isinstance(num_anchors, bool) or not isinstance(num_anchors, int) or num_anchors < 1:
            raise ValueError(f"num_anchors must be a positive int; got {num_anchors!r}")
        self.num_anchors = num_anchors

    def __repr__(self):
        return f"AuthorsStatistics(num_anchors={self.num_anchors})"

    def __call__(self, grad: torch.Tensor, targets: torch.Tensor):
        """(M, K) dL_total/dz and one-hot targets -> (K,) positive and negative sums."""
        g = as_authors_read_it(grad.detach().abs().float(), self.num_anchors)
        y = targets.to(g.dtype)
        return (g * y).sum(dim=0), (g * (1 - y)).sum(dim=0)
