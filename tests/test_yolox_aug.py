"""The YOLOX-IP augmentations (efl.data.yolox_aug) and their repeat-factor epoch length
(efl.data.up_epochs): every ground-truth box is drawn into a black image in a colour of its
own; after each transform, and after the whole chain, each output box must be mostly its
colour and its colour's pixels must lie in the box. Then the switch-off of mosaic / affine /
mixup at the right iteration through the training loader with a worker process,
determinism by seed, bad input."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from efl.data import build_train_loader
from efl.data.up_epochs import (
    ceil_repeat_factors, no_aug_start, repeated_pass_iterations, schedule_epoch_iterations)
from efl.data.yolox_aug import (
    LongestSideResize, YOLOXTrainMapper, augment_hsv, hflip, mixup, mosaic, random_affine,
    random_square_resize, yolox_aug_params)
from efl.errors import InputError

# 7 colours whose channels are 0 or 255: an edge pixel blended with black or with another
# colour (128-ish in some channel) matches none of them.
COLOURS = np.array([c for c in itertools.product((0, 255), repeat=3) if any(c)], dtype=np.uint8)
P = yolox_aug_params("s", input_size=320)


def draw(h, w, boxes, colour_ids):
    """Black (h, w, 3) image with box i filled with COLOURS[colour_ids[i]]."""
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for (x0, y0, x1, y1), c in zip(boxes, colour_ids):
        image[int(y0):int(y1), int(x0):int(x1)] = COLOURS[c]
    return image, np.asarray(boxes, dtype=np.float64), np.asarray(colour_ids, dtype=np.int64)


def sample_set():
    """Four samples (different shapes) with 2, 2, 2, 1 non-overlapping boxes: 7 colours."""
    return [
        draw(96, 128, [[8, 10, 48, 60], [70, 30, 120, 90]], [0, 1]),
        draw(128, 80, [[5, 5, 40, 50], [30, 70, 75, 120]], [2, 3]),
        draw(64, 64, [[4, 4, 30, 30], [36, 20, 60, 58]], [4, 5]),
        draw(100, 100, [[20, 20, 80, 70]], [6]),
    ]


def check_boxes(image, boxes, classes, factor=1.0, min_fill=0.5, min_inside=0.9):
    """Each box (>= 6 px) mostly its colour; each kept colour's pixels inside its box (1.5 px
    margin). ``factor`` 0.5: a 50/50 blend (mixup) with a black or white (colour 6) image; a
    box's pixel counts as its colour when the other half is black or white."""
    assert len(boxes) == len(classes) and len(boxes) > 0
    h, w = image.shape[:2]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert len(set(classes.tolist())) == len(classes), "one box per colour in these tests"
    for box, c in zip(boxes, classes):
        target = COLOURS[c].astype(np.float32) * factor
        match = (np.abs(image.astype(np.float32) - target) <= 40).all(axis=2)
        x0, y0, x1, y1 = box
        if min(x1 - x0, y1 - y0) >= 6:
            inner = match
            if factor != 1.0:
                rest = np.abs(image.astype(np.float32) - target)
                inner = ((rest <= 40) | (np.abs(rest - 127.5) <= 40)).all(axis=2)
            inner = inner[int(np.ceil(y0)):int(y1), int(np.ceil(x0)):int(x1)]
            assert inner.mean() >= min_fill, (box, c, inner.mean())
        ys, xs = np.nonzero(match)  # none: covered by mixup's white box (fill checked above)
        if factor != 1.0 and len(xs) == 0:
            continue
        inside = (xs >= x0 - 1.5) & (xs < x1 + 1.5) & (ys >= y0 - 1.5) & (ys < y1 + 1.5)
        assert inside.mean() >= min_inside, (box, c, inside.mean())


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_keeps_boxes_on_their_objects(seed):
    image, boxes, classes = mosaic(sample_set(), 320, np.random.default_rng(seed))
    assert image.shape == (640, 640, 3)
    visible = (boxes[:, 2] - boxes[:, 0] > 1) & (boxes[:, 3] - boxes[:, 1] > 1)
    check_boxes(image, boxes[visible], classes[visible])


@pytest.mark.parametrize("seed", range(8))
def test_random_affine_keeps_boxes_on_their_objects(seed):
    rng = np.random.default_rng(seed)
    big = draw(640, 640, [[100, 120, 260, 300], [350, 80, 560, 240], [300, 380, 420, 600]],
               [0, 3, 5])
    image, boxes, classes = random_affine(big, rng, P)
    assert image.shape == (320, 320, 3)  # their border -input/2 on each side
    if len(boxes):
        # rotation <= 10 deg and shear <= 2 deg: a rectangle fills most of its new bounding box
        check_boxes(image, boxes, classes, min_fill=0.6)


@pytest.mark.parametrize("seed", range(6))
def test_mixup_adds_the_other_images_boxes_where_they_are(seed):
    rng = np.random.default_rng(seed)
    base = (np.zeros((320, 320, 3), np.uint8), np.zeros((0, 4)), np.zeros(0, np.int64))
    other = sample_set()[0]
    image, boxes, classes = mixup(base, other, rng, P)
    if len(boxes):  # blended 50/50 with a black image: the colours at half brightness
        check_boxes(image, boxes, classes, factor=0.5)
    # the sample's own boxes stay as they were, the other's follow
    own = draw(320, 320, [[10, 10, 60, 50]], [6])
    _, boxes2, classes2 = mixup(own, other, np.random.default_rng(seed), P)
    np.testing.assert_array_equal(boxes2[:1], own[1])
    assert classes2[0] == 6


def test_hsv_changes_colours_but_not_boxes_or_black():
    image, boxes, classes = sample_set()[0]
    out = augment_hsv(image, np.random.default_rng(3), P.hsv_gains)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[image.sum(2) == 0] == 0).all()  # value x gain of 0 stays 0
    assert not np.array_equal(out, image)
    gray = np.full((4, 4, 3), 128, np.uint8)  # no saturation: only value changes
    assert (augment_hsv(gray, np.random.default_rng(3), P.hsv_gains).std(axis=2) == 0).all()


def test_flip_and_resize_keep_boxes_on_their_objects():
    image, boxes, classes = sample_set()[1]
    flipped, fboxes = hflip(image, boxes, np.random.default_rng(0), prob=1.0)
    check_boxes(flipped, fboxes, classes)
    np.testing.assert_array_equal(fboxes[:, [0, 2]], 80 - boxes[:, [2, 0]])
    same, sboxes = hflip(image, boxes, np.random.default_rng(0), prob=0.0)
    assert same is image and sboxes is boxes
    sizes = set()
    for seed in range(12):
        out, rboxes, rclasses = random_square_resize((image, boxes, classes),
                                                     np.random.default_rng(seed), P)
        side = out.shape[0]
        assert out.shape == (side, side, 3) and side % P.scale_step == 0 and 240 <= side <= 400
        assert (out[:, int(side * 80 / 128) + 1:] == 0).all()  # padded right, image top-left
        check_boxes(out, rboxes, rclasses)
        sizes.add(side)
    assert len(sizes) > 3
    big = np.zeros((1000, 1000, 3), np.uint8)  # scaled by 0.24..0.4: 1 px or less is dropped
    tiny = (big, np.array([[0, 0, 2.5, 30.0], [0, 0, 30.0, 30.0]]), np.array([0, 1]))
    assert random_square_resize(tiny, np.random.default_rng(0), P)[2].tolist() == [1]


class FakeDataset:
    """Dataset dicts whose images are drawn in memory (the mapper's ``load`` overridden)."""

    @staticmethod
    def dicts():
        out = []
        for i, (image, boxes, classes) in enumerate(sample_set()):
            out.append({"file_name": f"img{i}.png", "image_id": i, "height": image.shape[0],
                        "width": image.shape[1], "sample": i,
                        "annotations": [{"bbox": b.tolist(), "bbox_mode": 0, "category_id": int(c)}
                                        for b, c in zip(boxes, classes)]})
        return out


class InMemoryMapper(YOLOXTrainMapper):
    def load(self, record):
        return sample_set()[record["sample"]]


@pytest.mark.parametrize("seed", range(6))
def test_whole_chain_keeps_boxes_on_their_objects(seed):
    """mosaic (samples 0-2 and a blank one: colours 0-5) -> affine -> mixup with a white box
    (colour 6: its blends with colours 0-5 match none of them at half brightness) -> HSV
    with zero gains (colours intact) -> flip -> resize."""
    mapper = InMemoryMapper("s", input_size=320, dataset=FakeDataset.dicts())
    mapper.params = replace(mapper.params, hsv_gains=(0.0, 0.0, 0.0))
    samples = sample_set()
    blank = (np.zeros((90, 90, 3), np.uint8), np.zeros((0, 4)), np.zeros(0, np.int64))
    white = draw(200, 200, [[60, 70, 100, 110]], [6])
    image, boxes, classes = mapper.augment(samples[0], np.random.default_rng(seed), strong=True,
                                           others=[samples[1], samples[2], blank, white])
    side = image.shape[0]
    assert image.shape == (side, side, 3) and 240 <= side <= 400
    assert set(classes.tolist()) <= set(range(7))
    if len(boxes):
        mixed = 6 in classes.tolist()  # mixup kept the white box: everything at half
        check_boxes(image, boxes, classes, factor=0.5 if mixed else 1.0)


def test_mapper_output_and_switch_off_after_the_right_iteration():
    """Through build_train_loader with one worker process: mosaic / affine / mixup (boxes
    from several images) until iteration 3, then only HSV / flip / resize (each image's
    own boxes)."""
    dicts = FakeDataset.dicts()
    mapper = InMemoryMapper("s", input_size=320, no_aug_from_iter=3)
    loader = build_train_loader(dataset=dicts, mapper=mapper, total_batch_size=2, num_workers=1,
                                aspect_ratio_grouping=False, seed=7)
    strong, weak = [], []
    for it, batch in zip(range(6), loader):
        for item in batch:
            inst = item["instances"]
            assert item["image"].dtype.__str__() == "torch.uint8" and item["image"].shape[0] == 3
            assert tuple(inst.image_size) == tuple(item["image"].shape[1:])
            own = {int(a["category_id"]) for a in dicts[item["image_id"]]["annotations"]}
            (strong if it < 3 else weak).append(set(inst.gt_classes.tolist()) <= own)
    assert all(weak) and len(weak) == 6  # from iteration 3 on: each image's own boxes only
    assert not all(strong)  # before: boxes of other images (mosaic / mixup)
    assert mapper.strong_at(2) and not mapper.strong_at(3) and mapper.strong_at(None)


def test_same_seed_same_images():
    def run(seed, workers):
        mapper = InMemoryMapper("m", input_size=320)
        loader = build_train_loader(dataset=FakeDataset.dicts(), mapper=mapper,
                                    total_batch_size=2, num_workers=workers,
                                    aspect_ratio_grouping=False, seed=seed)
        return [(item["image"].numpy(), item["instances"].gt_boxes.tensor.numpy())
                for _, batch in zip(range(2), loader) for item in batch]

    a, b, c = run(1, 0), run(1, 0), run(2, 0)
    for (ia, ba), (ib, bb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ba, bb)
    assert any(ia.shape != ic.shape or not np.array_equal(ia, ic) for (ia, _), (ic, _) in zip(a, c))


def test_repeat_factor_epoch_length_by_hand():
    """10 images; class 0 in all, class 1 in 1 image (f 0.1), class 2 in 2 (f 0.2); t 0.3:
    r = max(1, sqrt(0.3 / f)) = 1, 1.73 -> 2, 1.22 -> 2 (ceil). Images: 8 x 1 + 2 x 2 = 12
    samples (image 0 holds classes 1 and 2). Their schedule epoch: ceil(ceil(10 / 2) / 2) = 3
    iterations on 2 GPUs x 2; one repeated pass: ceil(ceil(12 / 2) / 2) = 3; on 1 GPU x 3:
    4 and 4; on 1 GPU x 5: 2 and 3."""
    classes = [[0, 1, 2], [0, 2]] + [[0]] * 8
    dicts = [{"annotations": [{"category_id": c} for c in cs]} for cs in classes]
    factors = ceil_repeat_factors(dicts, 0.3)
    assert factors.tolist() == [2.0, 2.0] + [1.0] * 8
    assert schedule_epoch_iterations(10, 2, 2) == 3 and repeated_pass_iterations(factors, 2, 2) == 3
    assert schedule_epoch_iterations(10, 3) == 4 and repeated_pass_iterations(factors, 3) == 4
    assert schedule_epoch_iterations(10, 5) == 2 and repeated_pass_iterations(factors, 5) == 3
    # LVIS v1 (99388 annotated images), 16 GPUs x 8: 777 iterations; no augs from 285 x 777
    assert schedule_epoch_iterations(99388, 8, 16) == 777
    assert no_aug_start(777) == 221445


def test_bad_size_is_one_paragraph():
    with pytest.raises(InputError) as e:
        yolox_aug_params("l")
    message = str(e.value)
    assert "'l'" in message and "['m', 's']" in message and "\n" not in message
    with pytest.raises(InputError, match="input_size=330"):
        yolox_aug_params("s", input_size=330)
    with pytest.raises(InputError, match="dataset"):  # mosaic without the dataset
        InMemoryMapper("s", input_size=320)(FakeDataset.dicts()[0])


def test_test_resize_sets_the_longer_side():
    image = np.zeros((300, 200, 3), np.uint8)
    t = LongestSideResize(640).get_transform(image)
    assert t.apply_image(image).shape == (640, 427, 3)
    np.testing.assert_allclose(t.apply_box(np.array([[0, 0, 100, 150.0]])), [[0, 0, 213.5, 320]],
                               atol=0.5)


@pytest.mark.parametrize("size", ["s", "m"])
def test_lvis_data_piece_has_the_recipe(size):
    import sys

    from detectron2.config import instantiate

    from helpers import ROOT

    sys.path.insert(0, ROOT)
    from configs.common.data.yolox_lvis import yolox_epoch_iterations, yolox_lvis_dataloader

    d = yolox_lvis_dataloader(size)
    train = d.train
    assert train.total_batch_size == 128 and train.repeat_thresh == 0.001
    assert train.repeat_rounding == "ceil" and train.aspect_ratio_grouping is False
    assert train.dataset.names == "lvis_v1_train" and train.dataset.filter_empty is True
    assert yolox_epoch_iterations() == 777 and train.mapper.no_aug_from_iter == 285 * 777
    mapper = instantiate(train.mapper)
    assert mapper.params == yolox_aug_params(size) and mapper.params.input_size == 640
    p = mapper.params
    assert (p.degrees, p.scale, p.shear, p.mixup_scale) == (10.0, (0.1, 2.0), 2.0, (0.8, 1.6))
    (resize,) = instantiate(d.test.mapper.augmentations)
    assert isinstance(resize, LongestSideResize) and resize.max_size == 640
    assert d.evaluator.max_dets_per_image == 300
    with pytest.raises(InputError, match="'x'"):
        yolox_lvis_dataloader("x")


def test_mapper_runs_in_detectron2s_own_loader_with_a_worker():
    """Detectron2's build_detection_train_loader gives no iteration: the chain runs in full,
    the other images drawn from the dataset given to the mapper."""
    from detectron2.data import build_detection_train_loader

    dicts = FakeDataset.dicts()
    mapper = InMemoryMapper("s", input_size=320, dataset=dicts)
    loader = build_detection_train_loader(dataset=dicts, mapper=mapper, total_batch_size=2,
                                          num_workers=1)
    batch = next(iter(loader))
    assert len(batch) == 2
    for item in batch:
        side = item["image"].shape[1]
        assert item["image"].shape == (3, side, side) and 240 <= side <= 400
