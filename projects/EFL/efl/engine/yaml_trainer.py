"""Detectron2's ``DefaultTrainer`` for YAML configs, evaluating LVIS-format datasets with
the project's evaluator (Detectron2's ``LVISEvaluator`` stops inside lvis-api 0.5.3 on
numpy >= 1.24: ``np.float``)."""

import os

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer

from ..errors import InputError
from ..evaluation import FastLVISEvaluator

__all__ = ["YAMLTrainer"]


class YAMLTrainer(DefaultTrainer):
    """``DefaultTrainer`` (its hooks, ``DetectionCheckpointer``, writers, ``TEST.EVAL_PERIOD``)
    whose ``build_evaluator`` is :class:`efl.evaluation.FastLVISEvaluator`: lvis-api's box
    AP numbers, ``TEST.DETECTIONS_PER_IMAGE`` detections per image, detections written to
    ``OUTPUT_DIR/inference``. ::

        cfg = get_cfg(); efl.add_efl_config(cfg); cfg.merge_from_file(...)
        trainer = YAMLTrainer(cfg); trainer.resume_or_load(resume=False); trainer.train()
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        json_file = MetadataCatalog.get(dataset_name).get("json_file")
        if not json_file:
            raise InputError(
                f"DATASETS.TEST names '{dataset_name}', which has no LVIS-format json_file in "
                "its metadata, so it cannot be evaluated as LVIS. Register it with "
                "efl.data.lvis.register_lvis_format(name, json_file, image_root) (or "
                "Detectron2's register_lvis_instances), or override build_evaluator (e.g. "
                "Detectron2's COCOEvaluator for a COCO-format dataset)."
            )
        return FastLVISEvaluator(
            dataset_name,
            output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"),
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        )
