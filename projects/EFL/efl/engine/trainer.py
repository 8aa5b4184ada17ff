"""A trainer with ``DefaultTrainer``'s shape, driven by a LazyConfig.

Config layout (Detectron2's LazyConfig convention): ``model``, ``dataloader.train``,
``dataloader.test``, ``dataloader.evaluator``, ``optimizer``, ``lr_multiplier`` and
``train`` (``output_dir``, ``init_checkpoint``, ``max_iter``, ``eval_period``,
``log_period``, ``checkpointer``, ``device``, ``seed``, ``amp``, ``ddp``).
"""

import json
import logging
import os
import weakref
from typing import List

import torch
from omegaconf import ListConfig

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import AMPTrainer, SimpleTrainer, TrainerBase, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm

from .. import compat
from ..data.lvis import prepare_datasets
from ..errors import InputError
from .hooks import EFLSummaryLogger

__all__ = ["Trainer", "dataset_names"]

logger = logging.getLogger(__name__)


def dataset_names(node) -> List[str]:
    """The dataset names a ``dataloader.{train,test}`` node reads (``dataset.names``)."""
    names = node.dataset.names
    return [names] if isinstance(names, str) else list(names)


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class Trainer(TrainerBase):
    """Train and evaluate a LazyConfig with Detectron2's default hooks.

    Methods follow :class:`detectron2.engine.DefaultTrainer` (build_model,
    build_optimizer, build_lr_scheduler, build_train_loader, build_test_loader,
    build_evaluator, build_hooks, build_writers, test, resume_or_load), so one piece can
    be overridden in a subclass. Checkpoints (``DetectionCheckpointer``) hold the model
    (with the EFL state), the optimizer, the LR scheduler's iteration and the iteration.
    """

    def __init__(self, cfg):
        super().__init__()
        prepare_datasets(dataset_names(cfg.dataloader.train) + dataset_names(cfg.dataloader.test))
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        ddp_args = {k: v for k, v in cfg.train.get("ddp", {}).items() if k != "fp16_compression"}
        model = compat.create_ddp_model(model, **ddp_args)
        use_amp = cfg.train.get("amp", {}).get("enabled", False)
        if use_amp and not torch.cuda.is_available():
            logger.warning("train.amp.enabled needs CUDA; training in float32 on CPU")
            use_amp = False  # compat (8): AMPTrainer asserts CUDA in v0.6
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(
            model, cfg.train.output_dir, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.train.max_iter
        self.cfg = cfg
        self._last_eval_results = None
        self.register_hooks(self.build_hooks())
        if comm.is_main_process():
            self._write_run_info()

    # ----- the DefaultTrainer interface -------------------------------------------------
    @property
    def model(self):
        return self._trainer.model

    @property
    def optimizer(self):
        return self._trainer.optimizer

    @property
    def data_loader(self):
        return self._trainer.data_loader

    @classmethod
    def build_model(cls, cfg) -> torch.nn.Module:
        model = instantiate(cfg.model).to(cfg.train.device)
        _check_num_classes(model, dataset_names(cfg.dataloader.train))
        logger.info("Model:\n{}".format(model))
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        cfg.optimizer.params.model = model
        return instantiate(cfg.optimizer)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), cfg.train.max_iter)

    @classmethod
    def build_train_loader(cls, cfg):
        return instantiate(cfg.dataloader.train)

    @classmethod
    def build_test_loader(cls, cfg):
        return instantiate(cfg.dataloader.test)

    @classmethod
    def build_evaluator(cls, cfg):
        compat.restore_numpy_aliases()  # compat (1): LVISEval on numpy >= 1.24
        if "output_dir" not in cfg.dataloader.evaluator or cfg.dataloader.evaluator.output_dir is None:
            cfg.dataloader.evaluator.output_dir = os.path.join(cfg.train.output_dir, "inference")
        return instantiate(cfg.dataloader.evaluator)

    def build_hooks(self):
        cfg = self.cfg
        main = comm.is_main_process()
        ret = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PeriodicCheckpointer(self.checkpointer, **cfg.train.checkpointer) if main else None,
            # After the checkpointer: a failed evaluation leaves the checkpoint to debug with.
            hooks.EvalHook(cfg.train.eval_period, self._test_and_save_results),
            EFLSummaryLogger(cfg.train.log_period) if main else None,
            hooks.PeriodicWriter(self.build_writers(), period=cfg.train.log_period) if main else None,
        ]
        return [h for h in ret if h is not None]

    def build_writers(self):
        """Console (with ETA), ``metrics.json`` and TensorBoard, as in Detectron2."""
        return default_writers(self.cfg.train.output_dir, self.max_iter)

    def resume_or_load(self, resume: bool = True):
        """With ``resume`` and a ``last_checkpoint`` in ``train.output_dir``: continue from it
        (model, EFL state, optimizer, scheduler, iteration). Otherwise load the model weights
        of ``train.init_checkpoint`` (if set) and start at iteration 0."""
        self.checkpointer.resume_or_load(self.cfg.train.init_checkpoint, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1

    def train(self):
        super().train(self.start_iter, self.max_iter)
        return self._last_eval_results

    def run_step(self):
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()  # compat (5): optimizer state
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def test(cls, cfg, model, evaluator=None):
        """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator``."""
        prepare_datasets(dataset_names(cfg.dataloader.test))
        data_loader = cls.build_test_loader(cfg)
        evaluator = evaluator or cls.build_evaluator(cfg)
        results = inference_on_dataset(model, data_loader, evaluator)
        if comm.is_main_process():
            logger.info("Evaluation results for {}:".format(dataset_names(cfg.dataloader.test)))
            print_csv_format(results)
        return results

    # ----- outputs ---------------------------------------------------------------------
    def _test_and_save_results(self):
        self._last_eval_results = self.test(self.cfg, self.model)
        if comm.is_main_process():
            done = min(self.iter + 1, self.max_iter)  # self.iter is max_iter in after_train
            record = {"iteration": done, "results": self._last_eval_results}
            _write_json_atomic(os.path.join(self.cfg.train.output_dir, "results.json"), record)
        return self._last_eval_results

    def _write_run_info(self):
        """``run_info.json``: what the report tools need to read this folder."""
        test_name = dataset_names(self.cfg.dataloader.test)[0]
        meta = MetadataCatalog.get(test_name)
        model = _unwrap(self.model)
        efl = getattr(model, "efl", None)
        info = {
            "meta_architecture": type(model).__name__,
            "num_classes": getattr(model, "num_classes", None),
            "efl": None if efl is None else {
                "gamma_b": efl.gamma_b, "scale_factor": efl.scale_factor, "alpha": efl.alpha,
            },
            "train_datasets": dataset_names(self.cfg.dataloader.train),
            "test_dataset": test_name,
            "test_json": meta.get("json_file"),
            "image_root": meta.get("image_root"),
            "max_iter": self.max_iter,
            "seed": self.cfg.train.get("seed", -1),
        }
        os.makedirs(self.cfg.train.output_dir, exist_ok=True)
        _write_json_atomic(os.path.join(self.cfg.train.output_dir, "run_info.json"), info)


def _check_num_classes(model, train_names):
    num_classes = getattr(model, "num_classes", None)
    meta = MetadataCatalog.get(train_names[0])
    classes = meta.get("thing_classes")
    if num_classes is not None and classes is not None and num_classes != len(classes):
        raise InputError(
            f"The config's model.num_classes={num_classes} but dataset '{train_names[0]}' "
            f"has {len(classes)} categories. Set model.num_classes={len(classes)} (e.g. as "
            f"a command-line override: model.num_classes={len(classes)})."
        )


def _write_json_atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)
