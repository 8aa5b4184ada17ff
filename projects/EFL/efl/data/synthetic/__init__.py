"""An embedded, long-tailed, LVIS-v1-format detection dataset that is generated on the fly.

Purpose: a stand-in for LVIS that a small RetinaNet can learn from scratch on a CPU in
minutes, with the same annotation format, the same evaluation rules and the same kind of
class imbalance, so that focal loss and Equalized Focal Loss can be compared end to end
(APr / APc / APf included) without downloading anything.

What the pictures hold
----------------------
Every image (default 128 x 128 RGB PNG) shows 2-6 objects on a noisy background. A class is
a visible combination ``<colour> x <shape>`` (x ``<pattern>`` beyond 120 classes):

* 10 shapes: disc, square, triangle, diamond, plus, cross, ring, frame, star, semicircle;
* 12 colours: red, orange, yellow, lime, green, cyan, blue, purple, magenta, brown, white,
  black (each instance jitters its colour by a few levels per channel);
* 2 patterns: solid, striped (only used when ``num_classes > 120``; at most 240 classes).

Objects have a size (geometric mean of the sides) log-uniform in 16-44 px and an aspect
ratio in 0.77-1.3 (so sides of about 14-50 px); they never overlap and are drawn
anti-aliased (4x supersampling); their box is the exact pixel extent of the drawn shape.
The background is a random low-saturation two-colour gradient plus a smooth random field,
a few thin coloured lines and grey specks (clutter that is no class), and the whole image
gets pixel noise (std 6). Background grey levels stay in 80-180 so white and black objects
stay visible.

The long tail
-------------
Class k in frequency rank order (k = 0 most frequent) is put in

    n_k = m * (h / m) ** u_k  training images,  u_k = log((K-1+q)/(k+q)) / log((K-1+q)/q),

a Zipf-Mandelbrot law n_k ~ (k + q) ** -a over rank (q = ``zipf_offset``, 10): the rarest
class gets ``m = min_images_per_class`` (2) images, and the head h is solved for so that the
classes fill exactly the object slots of the training images (each image gets a random
number of distinct classes in [min_objects, max_objects]). A plain exponential over rank
(q -> inf) cannot give "most classes rare" with LVIS's thresholds: the rare (1-10) and
common (11-100) bands are equally wide in log-count, so it puts as many classes in one as
in the other; the Zipf-like curve is convex in log-count (steep head, long flat tail) like
LVIS's. Which visual class gets which rank is a seeded random permutation, so rarity does
not correlate with shape or colour. A (image, class) pair gets a second instance with
probability ``duplicate_prob`` (0.2), so instance counts exceed image counts as in LVIS.

Families (an option: ``families`` > 0)
---------------------------------------
LVIS's rare classes are mostly fine-grained relatives of frequent ones, so a frequent
class's objects are hard negatives for its rare relatives. With ``families=F`` the
generator makes F families of ``family_size`` classes (default 4) sharing one filled shape
and one colour: a parent without a mark, which takes one of the F most frequent ranks,
and relatives that differ from it only in a small mark in the middle (a dot, a bar, an
inner outline, a cross; dark on light colours, light on dark ones), placed at random in
the rest of the tail (mostly rare or common). The other classes are as without families.
The option keys the cache; without it the data and its cache key are unchanged.
``efl.data.builtin`` registers ``synthetic_lt_families_{train,val}`` (16 families of 4,
``FAMILY_DATA``) for configs/Synthetic/retinanet_{focal,efl}_families.py;
``python -m efl.data.synthetic --root DIR --families 16`` generates it by hand.

Frequency groups: LVIS's own thresholds, kept
---------------------------------------------
``frequency`` is derived from the training split exactly as LVIS defines it: rare = 1-10
training images, common = 11-100, frequent > 100 (``rare_max_images`` = 10,
``common_max_images`` = 100). We keep LVIS's numbers rather than scaling them down: the
default 2000 training images already give a majority of rare classes and several common
and frequent ones (defaults: 63 rare / 40 common / 17 frequent of 120), and with
unchanged thresholds "rare" keeps its absolute meaning (a class seen in at most 10
training images), which is what makes rare classes hard and what APr measures on LVIS.
Scaling the thresholds with the dataset size would instead call a class with, say, 30
training images "rare". Smaller configurations (e.g. in tests) may leave the frequent
group empty; the thresholds are configurable.

Validation split
----------------
Class-balanced: every class is in the same number of val images (+-1): with the defaults
300 images x 4 objects / 120 classes = 10 images, 10-12 instances per class, so AP per
group is not dominated by noise, and ``LVISEvaluator`` runs in seconds on a CPU.

Format
------
LVIS v1: ``images`` (id, width, height, file_name, coco_url =
``http://synthetic.invalid/<split_folder>/<file_name>``, ``neg_category_ids``,
``not_exhaustive_category_ids`` = []), ``annotations`` (id, image_id, category_id,
bbox [x, y, w, h], area = w * h, segmentation = the box as one polygon) and
``categories`` (id 1..K, name, synset, synonyms, def, frequency, image_count,
instance_count; plus shape/color/pattern). The same categories (with training counts) are
in both files, as in LVIS. Every image is exhaustively annotated, so ``neg_category_ids``
lists every class that is absent from it: LVIS's evaluation only counts a detection of
class c on an image as a false positive if c is annotated there or listed as negative.
Detectron2 v0.6's ``load_lvis_json`` finds an image at ``image_root + split_folder + "/" +
file_name`` (from the last two parts of coco_url), so ``image_root`` ends with "/".

Files under ``root``::

    root/train2017/000000000001.png ...      training images
    root/val2017/000001000001.png ...        validation images
    root/lvis_synthetic_train.json
    root/lvis_synthetic_val.json
    root/_DONE.json                          manifest, written last

Generation is deterministic by seed (same seed -> byte-identical files) and cached: a
dataset whose manifest holds the same generator version and parameters is reused. The
files are written into a temporary sibling folder that is renamed to ``root`` only when
complete, so an interrupted run never leaves anything that looks complete; an existing
``root`` with other parameters or without the manifest is replaced (only if it holds
nothing but this generator's files).

Usage::

    from efl.data.synthetic import SyntheticLongTailConfig, generate_synthetic_lvis
    paths = generate_synthetic_lvis("datasets/synthetic_lvis", SyntheticLongTailConfig(seed=0))
    # paths["train_json"], paths["val_json"], paths["image_root"] (ends with "/")

    python -m efl.data.synthetic --root datasets/synthetic_lvis [--seed 0]
"""

from .config import SyntheticLongTailConfig
from .draw import COLORS, MAX_CLASSES, PATTERNS, SHAPES
from .summary import class_frequency_table, main, summarize_split
from .tail import frequency_group, plan_train_image_counts
from .write import (
    FORMAT_VERSION,
    MANIFEST,
    TRAIN_JSON,
    TRAIN_SPLIT,
    VAL_JSON,
    VAL_SPLIT,
    dataset_paths,
    generate_synthetic_lvis,
    is_complete,
)

__all__ = [
    "SyntheticLongTailConfig",
    "generate_synthetic_lvis",
    "dataset_paths",
    "is_complete",
    "plan_train_image_counts",
    "frequency_group",
    "class_frequency_table",
    "summarize_split",
    "main",
]
