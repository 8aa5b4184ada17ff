"""Run a trained detector on image files: drawn detections and COCO-format results.

Images go through the config's test-time augmentations
(``dataloader.test.mapper.augmentations``, e.g. ``ResizeShortestEdge`` for LVIS) and the
detections come back in the original image's pixels, as in evaluation.
"""

import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import detectron2.data.transforms as T
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer

from .errors import InputError
from .io import write_json_atomic

__all__ = ["IMAGE_EXTENSIONS", "expand_inputs", "class_metadata", "Predictor", "PredictionRun",
           "no_images_error"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Files, folders (their image files, sorted, not recursive) and glob patterns -> the
    image paths, in order, without duplicates. A path that matches nothing is kept (it is
    reported as unreadable when read)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, f) for f in os.listdir(item)
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        elif not os.path.exists(item) and glob.has_magic(item):
            paths += sorted(p for p in glob.glob(item) if os.path.isfile(p))
        else:
            paths.append(item)
    return list(dict.fromkeys(paths))


def class_metadata(dataset_name: str):
    """The dataset's metadata with ``thing_classes``; LVIS-format JSON is read for it when
    the registration does not carry the names (``prepare_datasets``)."""
    meta = MetadataCatalog.get(dataset_name)
    if "thing_classes" not in meta.as_dict():
        from .data.lvis import prepare_datasets

        prepare_datasets([dataset_name])
    return meta


def _dataset_category_ids(meta, num_classes: int) -> List[int]:
    """Contiguous class id -> the dataset's category id (LVIS-format: id = index + 1)."""
    mapping = meta.get("thing_dataset_id_to_contiguous_id")
    if mapping:
        reverse = {v: k for k, v in mapping.items()}
        return [reverse[i] for i in range(num_classes)]
    return list(range(1, num_classes + 1))


class Predictor:
    """One image file -> ``Instances`` in its own pixels, with the config's test-time
    augmentations (like Detectron2's ``DefaultPredictor``, for a LazyConfig)."""

    def __init__(self, cfg, model: torch.nn.Module):
        self.model = model.eval()
        self.input_format = getattr(model, "input_format", "BGR")
        augmentations = cfg.dataloader.test.mapper.get("augmentations", [])
        self.augmentations = T.AugmentationList(instantiate(list(augmentations)))

    def read(self, path: str) -> np.ndarray:
        """(H, W, 3) uint8 in the model's input format; OSError etc. if unreadable."""
        return read_image(path, format=self.input_format)

    @torch.no_grad()
    def __call__(self, image: np.ndarray):
        height, width = image.shape[:2]
        aug = T.AugInput(image)
        self.augmentations(aug)
        tensor = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1))).float()
        inputs = {"image": tensor, "height": height, "width": width}
        return self.model([inputs])[0]["instances"].to("cpu")


@dataclass
class PredictionRun:
    """Predicts image files one by one into ``output_dir``: ``<image name>.png`` (the
    detections at or above ``score_thresh`` drawn) and, at :meth:`finish`,
    ``predictions.json`` (COCO results format, the dataset's category ids)."""

    predictor: Predictor
    metadata: object
    output_dir: str
    score_thresh: float = 0.3
    results: List[Dict] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    num_images: int = 0  # files handed to add(), readable or not: the next image_id
    _names: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        os.makedirs(self.output_dir, exist_ok=True)
        num_classes = self.predictor.model.num_classes
        self.category_ids = _dataset_category_ids(self.metadata, num_classes)

    def _drawing_name(self, path: str) -> str:
        stem = os.path.splitext(os.path.basename(path))[0]
        count = self._names.get(stem, 0)  # two inputs with the same name: a.png, a_2.png
        self._names[stem] = count + 1
        return f"{stem}.png" if count == 0 else f"{stem}_{count + 1}.png"

    def add(self, path: str) -> Optional[str]:
        """Predict one file; returns the drawing's path, or None if the image was
        unreadable (then listed in ``skipped`` and reported in the log)."""
        image_id = self.num_images
        self.num_images += 1
        try:
            image = self.predictor.read(path)
        except Exception as e:  # missing, truncated, not an image: skip it, go on
            reason = " ".join(str(e).split()) or type(e).__name__
            logger.error(f"Skipping {path}: cannot read it as an image ({reason}).")
            self.skipped.append(path)
            return None
        instances = self.predictor(image)
        instances = instances[instances.scores >= self.score_thresh]
        boxes = instances.pred_boxes.tensor.tolist()
        for (x1, y1, x2, y2), score, cls in zip(boxes, instances.scores.tolist(),
                                                 instances.pred_classes.tolist()):
            self.results.append({
                "image_id": image_id, "file_name": path,
                "category_id": self.category_ids[cls],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
            })
        rgb = image if self.predictor.input_format == "RGB" else image[:, :, ::-1]
        drawing = Visualizer(rgb, self.metadata).draw_instance_predictions(instances)
        out = os.path.join(self.output_dir, self._drawing_name(path))
        drawing.save(out)
        return out

    def finish(self) -> str:
        """Write ``predictions.json``; returns its path."""
        path = os.path.join(self.output_dir, "predictions.json")
        write_json_atomic(path, self.results, indent=None)
        return path


def no_images_error(inputs: Sequence[str]) -> InputError:
    return InputError(
        f"No image files found in --input {' '.join(inputs)}: give image files, folders "
        f"holding {'/'.join(IMAGE_EXTENSIONS)} files, or glob patterns (quoted, e.g. "
        "'photos/*.jpg')."
    )
