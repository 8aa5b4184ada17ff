"""A trainer with ``DefaultTrainer``'s shape, driven by a LazyConfig.

Config layout (Detectron2's LazyConfig convention): ``model``, ``dataloader.train``,
``dataloader.test``, ``dataloader.evaluator``, ``optimizer``, ``lr_multiplier`` and
``train`` (``output_dir``, ``init_checkpoint``, ``max_iter``, ``eval_period``,
``log_period``, ``checkpointer``, ``device``, ``seed``, ``amp``, ``ddp``, and this
project's ``epochs`` / ``clip_grad``, see :mod:`efl.solver`, and ``ema``, see
:mod:`efl.engine.ema`: with it, evaluation uses the EMA model and checkpoints hold it).

Reliability: checkpoints are written atomically (:class:`efl.checkpoint.EFLCheckpointer`)
and hold everything an exact resume needs (model with EFL state, optimizer, scheduler,
iteration, data-stream seed, per-rank RNG states and loss normaliser), so killing a run at
any moment and rerunning it with ``resume_or_load(resume=True)`` gives the weights of an
uninterrupted run (:mod:`efl.engine.resume`). SIGTERM or SLURM's early warning (USR2)
stops training after the iteration in progress with a checkpoint of it. These guarantees
(and AMP's unscaled loss statistics, the EFL-activity note) are the pieces of
:mod:`efl.engine.guarantees`, which ``YAMLTrainer`` registers too. A
NaN/infinite loss stops training (:class:`efl.errors.TrainingDiverged`) without writing
anything after the last good checkpoint; a failed run is not evaluated.
"""

import copy
import logging
import math
import os
import weakref
from typing import Optional

import torch

from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import (AMPTrainer, SimpleTrainer, TrainerBase, create_ddp_model,
                               default_writers, hooks)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm

from ..checkpoint import EFLCheckpointer
from ..data.lvis import prepare_datasets
from ..errors import InputError, TrainingDiverged
from ..io import write_json_atomic
from ..records import RunRecord, cpu_model
from ..rng import preserve_rng_state
from ..solver import add_gradient_clipping
from .config_checks import check_efl_hyperparameters, target_parameters
from .ema import ModelEMAUpdate, build_model_ema, ema_settings
from .guarantees import register_run_guarantees
from .hooks import EFLSummaryLogger, EvalHook, unwrap_ddp
from .norm_sync import AllReduceNorm
from .resume import resume_or_load
from .setup import RunPlan, dataset_names, plan_run

__all__ = ["Trainer", "dataset_names", "quiet_input_error_tracebacks"]

logger = logging.getLogger(__name__)


class _NoTracebackForInputErrors(logging.Filter):
    def filter(self, record):
        return not (record.exc_info and isinstance(record.exc_info[1], InputError))


def quiet_input_error_tracebacks() -> None:
    """``TrainerBase.train`` logs every exception with its stack trace; an InputError's
    message says it all (``train_net.py`` prints it). Called once by ``train_net.py``."""
    train_loop_logger = logging.getLogger("detectron2.engine.train_loop")
    if not any(isinstance(f, _NoTracebackForInputErrors) for f in train_loop_logger.filters):
        train_loop_logger.addFilter(_NoTracebackForInputErrors())


class Trainer(TrainerBase):
    """Train and evaluate a LazyConfig with Detectron2's default hooks.

    Methods follow :class:`detectron2.engine.DefaultTrainer` (build_model,
    build_optimizer, build_lr_scheduler, build_train_loader, build_test_loader,
    build_evaluator, build_hooks, build_writers, test, resume_or_load), so one piece can
    be overridden in a subclass. Checkpoints (``EFLCheckpointer``, a
    ``DetectionCheckpointer``) hold the model (with the EFL state), the optimizer, the LR
    scheduler's iteration, the iteration, the data-stream seed and, per rank, the RNG
    states and loss normaliser (``ResumeState``). ``build_hooks`` are Detectron2's
    defaults; :func:`efl.engine.register_run_guarantees` adds the guarantees' hooks.
    """

    def __init__(self, cfg, plan: Optional[RunPlan] = None):
        """``plan``: from :func:`efl.engine.plan_run` (default: ``plan_run(cfg)``, a fresh
        run; ``train_net.py`` passes ``plan_run(cfg, resume=args.resume)``)."""
        super().__init__()
        plan = plan or plan_run(cfg)
        model = self.build_model(cfg)
        self.ema = self.build_model_ema(cfg, model)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = plan.train_loader

        ddp_args = dict(cfg.train.get("ddp", {}))
        if not next(model.parameters()).is_cuda:
            ddp_args.setdefault("device_ids", None)  # DDP takes no device ids for CPU modules
        model = create_ddp_model(model, **ddp_args)
        model.register_forward_hook(self._stop_on_non_finite_losses)
        use_amp = cfg.train.get("amp", {}).get("enabled", False)
        if use_amp and not torch.cuda.is_available():
            logger.warning("train.amp.enabled needs CUDA (Detectron2's AMPTrainer); training "
                           "in float32 on CPU")
            use_amp = False
        if use_amp:  # its scaler is attached to the losses (GradScalerCommit)
            scaler = self.build_grad_scaler(cfg)
            self._trainer = AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer, plan)
        extra = {"ema": self.ema} if self.ema is not None else {}
        self.checkpointer = EFLCheckpointer(model, cfg.train.output_dir, trainer=weakref.proxy(self),
                                            **extra)
        self.start_iter = 0
        self.max_iter = plan.max_iter
        self.plan = plan
        self.cfg = cfg
        self._last_eval_results = None
        self.register_hooks(self.build_hooks())
        register_run_guarantees(self, cfg.train.checkpointer.period)
        if self.ema is not None:
            self._register_before_saving(ModelEMAUpdate(self.ema))
        if cfg.train.get("all_reduce_norm", False):  # after the EMA update, as theirs
            self._register_before_saving(AllReduceNorm(cfg.train.eval_period, self.ema))
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
        check_efl_hyperparameters(cfg)
        model = instantiate(cfg.model).to(cfg.train.device)
        _check_num_classes(model, dataset_names(cfg.dataloader.train))
        logger.info("Model:\n{}".format(model))
        return model

    @classmethod
    def build_model_ema(cls, cfg, model):
        """With ``train.ema.enabled``: the EMA of ``model`` (:mod:`efl.engine.ema`); else None."""
        settings = ema_settings(cfg.train)
        if settings is None:
            return None
        logger.info(f"Model EMA: decay {settings.decay} x (1 - exp(-t / {settings.tau})) over "
                    "every float state entry; evaluation uses it")
        return build_model_ema(model, settings)

    @classmethod
    def build_grad_scaler(cls, cfg):
        """The AMP ``GradScaler`` (``train.amp.enabled``), on ``train.device``'s type."""
        return torch.amp.GradScaler(torch.device(cfg.train.device).type)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """``cfg.optimizer``, clipping the total gradient norm first if
        ``train.clip_grad.enabled`` (``max_norm``, ``norm_type``)."""
        node = copy.deepcopy(cfg.optimizer)
        node.params.model = model
        optimizer = instantiate(node)
        clip = cfg.train.get("clip_grad") or {}
        if clip.get("enabled", False):
            add_gradient_clipping(optimizer, clip.max_norm, clip.get("norm_type", 2.0))
            logger.info(f"Gradient clipping: total {clip.get('norm_type', 2.0)}-norm of all "
                        f"parameters at most {clip.max_norm}")
        return optimizer

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer, plan: RunPlan):
        """``lr_multiplier`` over the plan's ``max_iter``; a multiplier in epochs
        (``multistep_in_epochs``) gets the plan's epoch starts."""
        node = cfg.lr_multiplier
        if plan.epoch_starts is not None and "epoch_starts" in target_parameters(node._target_):
            node = copy.deepcopy(node)
            node.epoch_starts = plan.epoch_starts
        return LRMultiplier(optimizer, instantiate(node), plan.max_iter)

    @classmethod
    def build_train_loader(cls, cfg):
        return instantiate(cfg.dataloader.train)

    @classmethod
    def build_test_loader(cls, cfg):
        return instantiate(cfg.dataloader.test)

    @classmethod
    def build_evaluator(cls, cfg):
        """``dataloader.evaluator``, writing to ``train.output_dir/inference`` unless it
        names its own ``output_dir``."""
        node = cfg.dataloader.evaluator
        if node.get("output_dir") is None:
            node = copy.deepcopy(node)
            node.output_dir = os.path.join(cfg.train.output_dir, "inference")
        return instantiate(node)

    def build_hooks(self):
        cfg = self.cfg
        main = comm.is_main_process()
        ret = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PeriodicCheckpointer(self.checkpointer, **cfg.train.checkpointer) if main else None,
            # After the checkpointer: a failed evaluation leaves the checkpoint to debug with.
            EvalHook(cfg.train.eval_period, self._test_and_save_results),
            EFLSummaryLogger(cfg.train.log_period) if main else None,
            hooks.PeriodicWriter(self.build_writers(), period=cfg.train.log_period) if main else None,
        ]
        return [h for h in ret if h is not None]

    def build_writers(self):
        """Console (with ETA), ``metrics.json`` and TensorBoard, as in Detectron2."""
        return default_writers(self.cfg.train.output_dir, self.max_iter)

    def resume_or_load(self, resume: bool = True):
        """With ``resume`` and a ``last_checkpoint`` in ``train.output_dir``: continue from it
        exactly (model, EFL state, optimizer, scheduler, iteration, data stream, RNG states,
        loss normaliser). Otherwise load the model weights of ``train.init_checkpoint`` (if
        set; what it does not initialise is logged) and start at iteration 0."""
        resume_or_load(self, self.cfg.train.init_checkpoint, resume, self.plan.resume,
                       self.plan.epoch_starts)
        if self.ema is not None and self.start_iter > 0 and int(self.ema.n_averaged) == 0:
            logger.warning("The checkpoint holds no model EMA: the EMA restarts from the "
                           f"weights of iteration {self.start_iter - 1}.")

    def _register_before_saving(self, hook) -> None:
        """Register ``hook`` after the run guarantees' early hooks (the step's EFL commit)
        and before the first ``PeriodicCheckpointer`` or ``EvalHook``."""
        self.register_hooks([hook])
        self._hooks.remove(hook)
        at = next((i for i, h in enumerate(self._hooks)
                   if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))), len(self._hooks))
        self._hooks.insert(at, hook)

    def train(self):
        super().train(self.start_iter, self.max_iter)
        return self._last_eval_results

    def run_step(self):
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def _stop_on_non_finite_losses(self, model, inputs, losses):
        """Forward hook: a NaN/infinite training loss stops the run before its backward
        pass, on whichever worker meets it, so no later step or checkpoint happens."""
        if not model.training or not isinstance(losses, dict):
            return
        values = {k: float(v.detach()) for k, v in losses.items()}
        if all(math.isfinite(v) for v in values.values()):
            return
        last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else ""
        shown = ", ".join(f"{k}: {v:.4g}" for k, v in values.items())
        raise TrainingDiverged(
            f"Training stopped at iteration {self.iter}: the loss became NaN or infinite "
            f"(losses: {shown}). Nothing was saved after the last good checkpoint"
            + (f", {last}" if last else " (none was written yet)")
            + ". Lower optimizer.lr or lengthen the warm-up (lr_multiplier), check the "
            "training boxes, then rerun"
            + (" with --resume to continue from that checkpoint." if last else ".")
        )

    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()  # optimizer state, as DefaultTrainer
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def test(cls, cfg, model, evaluator=None):
        """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator``."""
        prepare_datasets(dataset_names(cfg.dataloader.test))  # no-op when already prepared
        data_loader = cls.build_test_loader(cfg)
        evaluator = evaluator or cls.build_evaluator(cfg)
        results = inference_on_dataset(model, data_loader, evaluator)
        if comm.is_main_process():
            logger.info("Evaluation results for {}:".format(dataset_names(cfg.dataloader.test)))
            print_csv_format(results)
        return results

    # ----- outputs ---------------------------------------------------------------------
    def _test_and_save_results(self):
        with preserve_rng_state():  # evaluating must not change what training draws next
            model = self.ema.module if self.ema is not None else self.model
            self._last_eval_results = self.test(self.cfg, model)
        if comm.is_main_process():
            done = min(self.iter + 1, self.max_iter)  # self.iter is max_iter in after_train
            record = {"iteration": done, "results": self._last_eval_results}
            write_json_atomic(os.path.join(self.cfg.train.output_dir, "results.json"), record)
        return self._last_eval_results

    def _write_run_info(self):
        """``run_info.json``: what the report tools need to read this folder."""
        test_name = dataset_names(self.cfg.dataloader.test)[0]
        meta = MetadataCatalog.get(test_name)
        model = unwrap_ddp(self.model)
        cls_loss = getattr(model, "cls_loss", None)  # a stock RetinaNet/FCOS has none
        RunRecord(
            meta_architecture=type(model).__name__,
            num_classes=getattr(model, "num_classes", None),
            cls_loss=None if cls_loss is None else cls_loss.describe(),
            train_datasets=dataset_names(self.cfg.dataloader.train),
            test_dataset=test_name,
            test_json=meta.get("json_file"),
            image_root=meta.get("image_root"),
            max_iter=self.max_iter,
            seed=self.cfg.train.get("seed", -1),
            cpu=cpu_model(),
            torch_threads=torch.get_num_threads(),
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
        ).write(self.cfg.train.output_dir)


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
