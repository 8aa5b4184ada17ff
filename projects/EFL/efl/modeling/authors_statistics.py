"""The EFL authors' gradient statistics, reproduced for reproduction studies (off by
default): their collector (``up/utils/general/hook_helper.py`` 567-599, ``collect_grad`` in
their ``efl.py`` 98-118) reshapes the cls predictor's gradient as anchor-major while their
head is class-major, so with A > 1 anchors per location the per-class sums mix classes.
Their released A = 2 models were trained with these statistics; the paper's are what
:class:`EqualizedFocalLoss` accumulates by itself."""

import torch

__all__ = ["as_authors_read_it", "AuthorsStatisticsTap"]


def as_authors_read_it(grad: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """(M, K) per-anchor gradients, rows (image, level, y, x, a) as Detectron2 orders them
    -> what their collector attributes to (row, class): within each location, the A x K
    block read in class-major order (channel c * A + a) and re-read as anchor-major."""
    m, k = grad.shape
    block = grad.reshape(m // num_anchors, num_anchors, k)  # (locations, A, K), ours
    return block.transpose(1, 2).reshape(m, k)  # channel order c * A + a, cut into rows of K


class AuthorsStatisticsTap(torch.autograd.Function):
    """Identity on the logits; in backward, hands the loss module the per-class gradient
    magnitudes as the authors' collector computes them (``efl.accumulate_statistics``)."""

    @staticmethod
    def forward(ctx, logits, targets, efl, num_anchors: int):
        ctx.efl, ctx.num_anchors = efl, num_anchors
        ctx.save_for_backward(targets)
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad):
        (targets,) = ctx.saved_tensors
        g = as_authors_read_it(grad.detach().abs().float(), ctx.num_anchors)
        y = targets.to(g.dtype)
        ctx.efl.accumulate_statistics((g * y).sum(dim=0), (g * (1 - y)).sum(dim=0))
        return grad, None, None, None
