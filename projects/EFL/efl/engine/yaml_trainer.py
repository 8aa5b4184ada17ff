"""Detectron2's ``DefaultTrainer`` for YAML configs with the project's run guarantees
(:mod:`efl.engine.guarantees`: atomic checkpoints with the resume state, AMP's unscaled
loss statistics, preemption, the EFL-activity note), exact resume
(:mod:`efl.engine.resume`), a resumable training loader, and LVIS-format evaluation with
the project's evaluator (Detectron2's ``LVISEvaluator`` stops inside lvis-api 0.5.3 on
numpy >= 1.24: ``np.float``)."""

import os

from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer

from .. import compat
from ..data.resumable import ResumableTrainLoader
from ..errors import InputError
from ..evaluation import FastLVISEvaluator
from .guarantees import register_run_guarantees
from .resume import resume_or_load

__all__ = ["YAMLTrainer"]


class YAMLTrainer(DefaultTrainer):
    """``DefaultTrainer`` (its hooks, writers, ``TEST.EVAL_PERIOD``) plus the run
    guarantees (its checkpointer is an ``EFLCheckpointer``), an exact ``--resume``, and
    :class:`efl.evaluation.FastLVISEvaluator` as ``build_evaluator``: lvis-api's box AP
    numbers, ``TEST.DETECTIONS_PER_IMAGE`` detections per image, detections written to
    ``OUTPUT_DIR/inference``. ``tools/train_yaml.py`` is its command line. ::

        cfg = get_cfg(); efl.add_efl_config(cfg); cfg.merge_from_file(...)
        trainer = YAMLTrainer(cfg); trainer.resume_or_load(resume=False); trainer.train()
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        register_run_guarantees(self, cfg.SOLVER.CHECKPOINT_PERIOD)

    def state_dict(self):
        return compat.with_inner_trainer_state(self, super().state_dict())

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        compat.load_inner_trainer_state(self, state_dict)

    def resume_or_load(self, resume: bool = True):
        """As ``DefaultTrainer``'s, continuing exactly (:func:`efl.engine.resume.resume_or_load`)."""
        resume_or_load(self, self.cfg.MODEL.WEIGHTS, resume)

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's training dataset, mapper and sampler (``DATALOADER.SAMPLER_TRAIN``:
        ``TrainingSampler`` or ``RepeatFactorTrainingSampler``) in the project's resumable
        loader (:class:`efl.data.resumable.ResumableTrainLoader`): the batch of iteration i
        depends on (seed, i) alone, so a resumed run reads what an uninterrupted one reads."""
        args = build_detection_train_loader.from_config(cfg)
        return ResumableTrainLoader(
            args["dataset"], args["mapper"], args["sampler"], args["total_batch_size"],
            num_workers=args["num_workers"], aspect_ratio_grouping=args["aspect_ratio_grouping"],
        )

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
