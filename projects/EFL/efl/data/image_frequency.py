"""The image frequency of every class of a training set: the fraction of its annotated
images that contain the class. Equalization Loss (EQL) compares it with its threshold
lambda; :func:`efl.data.lvis.frequency_groups` reads the r/c/f groups the same way.

The EQL authors define it as ``image_count / N`` with N the number of training images
that carry at least one annotation (their ``mmdet/utils/lvis_v1_0_categories.py``); for
LVIS v1 train that N is 99388, and ``image_count`` is Detectron2's LVIS v1 metadata
(``class_image_count``), identical to theirs.
"""

import os
from typing import List

from detectron2.data import MetadataCatalog

from ..compat import lvis_v1_class_image_count
from ..errors import DatasetFormatError
from .lvis_checks import DatasetFilesMissing, read_categories, read_json

__all__ = ["LVIS_V1_TRAIN_ANNOTATED_IMAGES", "class_image_frequency"]

# lvis_v1_train.json: 100170 images, of which 99388 carry at least one annotation.
LVIS_V1_TRAIN_ANNOTATED_IMAGES = 99388


def class_image_frequency(dataset_name: str) -> List[float]:
    """(K,) fraction of the annotated training images of ``dataset_name`` that contain
    each class, in class order.

    ``lvis_v1_*``: Detectron2's LVIS v1 ``class_image_count`` / 99388 (on Detectron2 v0.6,
    which has none, the annotation file's, as for other datasets). Other LVIS-format
    datasets: the annotation file's categories' ``image_count`` (as LVIS and the embedded
    data write it) over the number of distinct ``image_id`` in its annotations.

    Raises:
        DatasetFormatError: the categories carry no ``image_count`` (naming the file).
        DatasetFilesMissing: the annotation file does not exist (yet).
    """
    meta = MetadataCatalog.get(dataset_name)
    counts = lvis_v1_class_image_count(dataset_name) if dataset_name.startswith("lvis_v1") else None
    if counts is not None:  # else (Detectron2 v0.6): the annotation file's, as other datasets
        counts = sorted(counts, key=lambda c: c["id"])
        return [c["image_count"] / LVIS_V1_TRAIN_ANNOTATED_IMAGES for c in counts]
    json_file = meta.get("json_file")
    if not json_file:
        raise DatasetFormatError(
            f"Dataset '{dataset_name}' has no annotation file in its metadata (json_file), so "
            "the image frequency of its classes, which Equalization Loss (EQL) needs, is "
            "unknown. Register it as an LVIS-format dataset (efl.data.register_lvis_format) "
            "or train with another loss."
        )
    if not os.path.isfile(json_file):
        raise DatasetFilesMissing(
            f"Dataset '{dataset_name}': {json_file} does not exist (yet); EQL reads the image "
            "frequency of its classes from it. A run creates generated datasets before it "
            f"builds the model; outside a run call efl.data.prepare_datasets(['{dataset_name}'])."
        )
    categories = read_categories(json_file)
    missing = [c["id"] for c in categories if not isinstance(c.get("image_count"), int)
               or isinstance(c.get("image_count"), bool) or c["image_count"] < 0]
    if missing:
        raise DatasetFormatError(
            f"{json_file}: categories {missing[:5]}{'...' if len(missing) > 5 else ''} have no "
            "'image_count' (a non-negative int: the number of training images that contain "
            "the category, as in LVIS's annotation files). Equalization Loss (EQL) compares "
            "each class's image frequency, image_count over the number of annotated images, "
            "with its threshold lambda. Add 'image_count' to every category, or train with "
            "another loss."
        )
    annotations = read_json(json_file).get("annotations") or []
    num_images = len({a.get("image_id") for a in annotations})
    if num_images == 0:
        raise DatasetFormatError(
            f"{json_file}: no annotations, so no class image frequency for EQL (the fraction "
            "of annotated images that contain each class)."
        )
    return [c["image_count"] / num_images for c in categories]
