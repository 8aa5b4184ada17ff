"""The improved detector (efl.modeling.atss): ATSS assignment, GIoU / IoU target and the
losses on hand-made boxes; a training and an inference step on random images; empty
images; the FPN top block; the YAML path."""

import math
import os

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from fvcore.nn import sigmoid_focal_loss_jit

from efl import ATSSRetinaNet, EqualizedFocalLoss, SigmoidFocalLoss, add_atss_config
from efl.modeling import ATSSAssigner, LastLevelP6P7
from efl.modeling.atss import box_iou_and_giou
from helpers import ROOT

K = 6


def boxes(*rows):
    return Boxes(torch.tensor(rows, dtype=torch.float32))


def small_model(efl=False):
    """configs/Synthetic/improved_focal.py (or _efl) with K classes."""
    name = "improved_efl.py" if efl else "improved_focal.py"
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic", name))
    cfg.model.num_classes = K
    if efl:
        cfg.model.cls_loss.class_groups = None
    return instantiate(cfg.model)


# ----- ATSS assignment ----------------------------------------------------------------
def test_atss_positives_are_candidates_above_mean_plus_std_from_every_level():
    gt = boxes([0, 0, 10, 10])  # centre (5, 5)
    level0 = boxes(
        [0, 0, 10, 8],  # IoU 0.8, centre (5, 4): inside
        [0, 0, 10, 7],  # IoU 0.7, centre (5, 3.5): inside
        [12, 0, 22, 10], [-12, 0, -2, 10], [0, 12, 10, 22], [0, -12, 10, -2],  # IoU 0, 12 px away
        [100, 100, 110, 110],  # farther than the 6 nearest: not a candidate
    )
    level1 = boxes([-10, -10, 20, 20])  # IoU 1/9, the only anchor of its level: a candidate
    matched, positive = ATSSAssigner(topk=6)([level0, level1], gt, (64, 64))
    # Candidate IoUs 0.8, 0.7, 0, 0, 0, 0, 1/9: mean 0.2302, std (n-1) 0.3586, threshold
    # 0.5888 -> the first two anchors only.
    assert positive.tolist() == [True, True, False, False, False, False, False, False]
    assert matched[positive].tolist() == [0, 0]


def test_atss_threshold_uses_the_unbiased_std():
    gt = boxes([0, 0, 10, 10])
    anchors = boxes(
        [0, 0, 10, 5],  # IoU 0.5
        [0, 0, 10, 4.2],  # IoU 0.42
        [40, 0, 50, 10], [-40, 0, -30, 10], [0, 40, 10, 50], [0, -40, 10, -30],  # IoU 0
    )
    # Candidate IoUs 0.5, 0.42, 0, 0, 0: mean 0.184; with the unbiased std (0.2535) the
    # threshold is 0.4375 and only the first anchor passes; the biased std (0.2268) would
    # give 0.4108 and let the second one in too.
    _, positive = ATSSAssigner(topk=5)([anchors[:5]], gt)
    assert positive.tolist() == [True, False, False, False, False]


def test_atss_anchor_centre_must_lie_inside_the_box():
    gt = boxes([0, 0, 10, 10])
    anchors = boxes(
        [0, 0, 20, 10],  # IoU 0.5 but centre (10, 5) on the box edge: not positive
        [0, 0, 19.8, 10],  # IoU 0.505, centre (9.9, 5): 0.1 px inside -> positive
        [40, 0, 50, 10], [-40, 0, -30, 10], [0, 40, 10, 50], [0, -40, 10, -30],
    )
    # IoUs 0.5, 0.505, 0, 0, 0, 0: threshold 0.427, both pass it; the centre test decides.
    _, positive = ATSSAssigner(topk=6)([anchors], gt)
    assert positive.tolist() == [False, True, False, False, False, False]


def test_atss_anchor_positive_for_two_boxes_goes_to_the_higher_iou():
    gt = boxes([0, 0, 10, 10], [1, 0, 11, 10])
    anchors = boxes(
        [1, 0, 11, 9],  # IoU 0.743 with box 0, 0.9 with box 1; centre inside both
        [30, 0, 40, 10], [-30, 0, -20, 10], [0, 30, 10, 40], [0, -30, 10, -20],
    )
    matched, positive = ATSSAssigner(topk=5)([anchors], gt)
    assert positive.tolist() == [True, False, False, False, False]
    assert matched[0].item() == 1


def test_atss_without_boxes_has_no_positives():
    matched, positive = ATSSAssigner(topk=3)([boxes([0, 0, 4, 4], [4, 4, 8, 8])], Boxes(torch.zeros(0, 4)))
    assert not positive.any() and matched.tolist() == [0, 0]


def test_atss_rejects_a_bad_topk():
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(topk=0)


# ----- GIoU, IoU target and the losses -----------------------------------------------
def test_iou_and_giou_on_hand_made_boxes():
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 4, 4], [0, 0, 1, 1]])
    gt = torch.tensor([[1.0, 1, 3, 3], [0, 0, 4, 2], [2, 0, 3, 1]])
    iou, giou = box_iou_and_giou(pred, gt)
    # 1: overlap 1, union 7, enclosing 9; 2: overlap 8, union 16 = enclosing;
    # 3: disjoint, union 2, enclosing 3.
    torch.testing.assert_close(iou, torch.tensor([1 / 7, 0.5, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(giou, torch.tensor([1 / 7 - 2 / 9, 0.5, -1 / 3]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("efl", [False, True], ids=["focal", "efl"])
def test_losses_on_hand_made_positives(efl):
    model = small_model(efl)
    anchors = [boxes([0, 0, 2, 2], [0, 0, 4, 4], [10, 10, 12, 12])]
    gt_labels = [torch.tensor([2, 4, K])]  # two positives, one background anchor
    gt_boxes = [torch.tensor([[1.0, 1, 3, 3], [0, 0, 4, 2], [0, 0, 0, 0]])]
    logits = torch.linspace(-3, 2, 3 * K).reshape(1, 3, K).requires_grad_()
    deltas = torch.zeros(1, 3, 4, requires_grad=True)  # predicted box = anchor
    iou_logits = torch.tensor([[[0.0], [1.0], [5.0]]], requires_grad=True)
    with EventStorage():
        losses = model.losses(anchors, [logits], gt_labels, [deltas], gt_boxes, [iou_logits])
    iou = torch.tensor([1 / 7, 0.5])
    one_minus_giou = torch.tensor([1 - (1 / 7 - 2 / 9), 0.5])
    expected_box = (iou * one_minus_giou).sum() / iou.sum()
    bce = -(iou * torch.log(torch.sigmoid(torch.tensor([0.0, 1.0])))
            + (1 - iou) * torch.log(1 - torch.sigmoid(torch.tensor([0.0, 1.0])))).sum()
    targets = torch.zeros(3, K)
    targets[0, 2] = targets[1, 4] = 1
    expected_cls = sigmoid_focal_loss_jit(logits.detach()[0], targets, 0.25, 2.0, "sum") / 2
    torch.testing.assert_close(losses["loss_box_reg"], expected_box, atol=1e-6, rtol=0)
    torch.testing.assert_close(losses["loss_iou"], bce / 2, atol=1e-6, rtol=0)
    # The first EFL step is focal loss (g = 1), normalised by N = 2 positives; the focal
    # baseline (SigmoidFocalLoss) is fvcore's scripted focal loss bitwise.
    torch.testing.assert_close(losses["loss_cls"], expected_cls, atol=1e-6, rtol=1e-6)
    if not efl:
        assert torch.equal(losses["loss_cls"], expected_cls)
    sum(losses.values()).backward()
    assert deltas.grad[0, :2].abs().sum() > 0 and deltas.grad[0, 2].abs().sum() == 0
    assert iou_logits.grad[0, 2].item() == 0  # the IoU branch learns on positives only
    if efl:
        assert model.cls_loss.pos_grad[[2, 4]].gt(0).all() and model.cls_loss.pos_grad[[0, 1, 3, 5]].eq(0).all()


# ----- training and inference on random images ---------------------------------------
def _instances(size, rows, classes):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(rows, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def test_training_step_with_an_empty_image_and_inference_step():
    torch.manual_seed(0)
    model = small_model(efl=True)
    model.train()
    image = torch.rand(3, 96, 128) * 255
    batch = [
        {"image": image, "instances": _instances((96, 128), [[10, 12, 40, 50], [60, 20, 110, 80]], [1, 3])},
        {"image": image, "instances": _instances((96, 128), [], [])},  # no annotations
    ]
    with EventStorage():
        losses = model(batch)
        assert set(losses) == {"loss_cls", "loss_box_reg", "loss_iou"}
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert model.head.iou_pred.weight.grad.abs().sum() > 0
        assert model.cls_loss.pos_grad.sum() > 0  # the statistics moved

        only_empty = model([batch[1]])
    assert only_empty["loss_box_reg"].item() == 0 and only_empty["loss_iou"].item() == 0
    assert torch.isfinite(only_empty["loss_cls"]) and only_empty["loss_cls"].item() > 0

    # Inference: score = sigmoid(cls) * sigmoid(iou). With constant head outputs every
    # score is sigmoid(b) * sigmoid(0).
    model.eval()
    head = model.head
    with torch.no_grad():
        for conv, bias in ((head.cls_score, -2.0), (head.iou_pred, 0.0)):
            conv.weight.zero_()
            conv.bias.fill_(bias)
        out = model([{"image": image}])[0]["instances"]
    assert 0 < len(out) <= model.max_detections_per_image
    torch.testing.assert_close(out.scores, torch.full_like(out.scores, 0.5 / (1 + math.exp(2))))


def test_authors_statistics_switch_accumulates_other_statistics():
    """efl_statistics="authors" (reproduction of their A = 2 statistics, off by default)
    still moves the EFL state in a training step, to other values than the paper's."""
    image = torch.rand(3, 96, 128) * 255
    batch = [{"image": image, "instances": _instances(
        (96, 128), [[10, 12, 40, 50], [60, 20, 110, 80]], [1, 3])}]
    state = {}
    for mode in ("paper", "authors"):
        torch.manual_seed(0)
        cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/improved_efl.py"))
        cfg.model.num_classes = K
        cfg.model.cls_loss.class_groups = None
        cfg.model.efl_statistics = mode
        model = instantiate(cfg.model).train()
        with EventStorage():
            sum(model(batch).values()).backward()
        state[mode] = model.cls_loss.pos_grad.clone()
    assert state["authors"].sum() > 0 and state["paper"].sum() > 0
    assert not torch.allclose(state["authors"], state["paper"])
    with pytest.raises(ValueError, match="efl_statistics"):
        cfg.model.efl_statistics = "mine"
        instantiate(cfg.model)


def test_the_model_keeps_retinanet_attribute_names():
    model = small_model()
    assert isinstance(model, ATSSRetinaNet) and type(model.cls_loss) is SigmoidFocalLoss
    for name in ("num_classes", "anchor_generator", "anchor_matcher", "box2box_transform",
                 "head_in_features", "test_score_thresh", "test_topk_candidates",
                 "test_nms_thresh", "max_detections_per_image", "focal_loss_alpha",
                 "focal_loss_gamma", "input_format"):
        assert hasattr(model, name), name
    assert model.test_topk_candidates == 6000 and model.test_nms_thresh == 0.5


def test_efl_must_match_the_class_count():
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/improved_efl.py"))
    cfg.model.num_classes = K
    cfg.model.cls_loss = EqualizedFocalLoss(K + 1)
    with pytest.raises(ValueError, match="num_classes"):
        instantiate(cfg.model)


def test_p7_without_relu():
    torch.manual_seed(0)
    block = LastLevelP6P7(4, 4, relu_before_p7=False)
    c5 = torch.randn(1, 4, 16, 16)
    p6, p7 = block(c5)
    torch.testing.assert_close(p7, block.p7(p6))
    assert not torch.allclose(p7, block.p7(torch.relu(p6)))  # Detectron2's default differs
    block.relu_before_p7 = True
    torch.testing.assert_close(block(c5)[1], block.p7(torch.relu(p6)))


def test_yaml_config_builds_the_improved_detector():
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "ATSSRetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_atss_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.RETINANET.NUM_CLASSES = K
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.RETINANET.PRIOR_PROB = 0.001
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[6 * s, 8 * s] for s in (8, 16, 32, 64, 128)]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    cfg.MODEL.ANCHOR_GENERATOR.OFFSET = 0.5
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert isinstance(model, ATSSRetinaNet) and isinstance(model.cls_loss, EqualizedFocalLoss)
    assert model.anchor_matcher.topk == 18 and model.backbone.top_block.relu_before_p7 is False
    assert isinstance(model.head.cls_subnet[1], torch.nn.GroupNorm)
    torch.testing.assert_close(model.head.cls_score.bias, torch.full_like(model.head.cls_score.bias,
                                                                          math.log(0.001 / 0.999)))
    cfg.MODEL.ATSS.CLASSIFICATION_LOSS = "focal"  # the older key still works
    assert type(build_model(cfg).cls_loss) is SigmoidFocalLoss
    cfg.MODEL.ATSS.CLASSIFICATION_LOSS = ""
    cfg.MODEL.EFL.LOSS = "focal"
    assert type(build_model(cfg).cls_loss) is SigmoidFocalLoss
    cfg.MODEL.EFL.LOSS = "QFL"
    with pytest.raises(ValueError, match="QualityFocalLoss needs quality targets but ATSSRetinaNet"):
        build_model(cfg)


# ----- normalisers over workers (gloo) ------------------------------------------------
def _losses_on_rank(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from detectron2.utils import comm

        assert comm.get_world_size() == world
        model = small_model()
        anchors = [boxes([0, 0, 2, 2], [0, 0, 4, 4], [10, 10, 12, 12])]
        if rank == 0:  # two positives (IoU targets 1/7 and 1/2)
            labels, gt = [2, 4, K], [[1.0, 1, 3, 3], [0, 0, 4, 2], [0, 0, 0, 0]]
        else:  # background only
            labels, gt = [K, K, K], [[0.0, 0, 0, 0]] * 3
        with EventStorage():
            losses = model.losses(anchors, [torch.zeros(1, 3, K)], [torch.tensor(labels)],
                                  [torch.zeros(1, 3, 4)], [torch.tensor(gt)],
                                  [torch.zeros(1, 3, 1)])
        torch.save({k: v.detach() for k, v in losses.items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_normalisers_are_averaged_over_workers(tmp_path):
    """N = positives summed over workers / world size (at least 1); the box loss is divided
    by the IoU targets summed over workers / world size."""
    import torch.multiprocessing as mp

    mp.spawn(_losses_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    iou = torch.tensor([1 / 7, 0.5])
    one_minus_giou = torch.tensor([1 - (1 / 7 - 2 / 9), 0.5])
    normalizer = max((2 + 0) / 2, 1.0)  # positives over both workers / 2
    iou_normalizer = (iou.sum() + 0) / 2
    torch.testing.assert_close(rank0["loss_box_reg"], (iou * one_minus_giou).sum() / iou_normalizer)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.zeros(2), iou, reduction="sum")
    torch.testing.assert_close(rank0["loss_iou"], bce / normalizer)
    focal = sigmoid_focal_loss_jit(torch.zeros(3, K), torch.zeros(3, K), 0.25, 2.0, "sum")
    torch.testing.assert_close(rank1["loss_cls"], focal / normalizer)
    assert rank1["loss_box_reg"].item() == 0 and rank1["loss_iou"].item() == 0
