"""Checks of a LazyConfig before it runs, as ConfigErrors naming the config key:

- :func:`load_config`: the config file exists and every command-line override names an
  existing key (``LazyConfig.apply_overrides`` silently adds unknown ones, so a typo such as
  ``train.max_iterr=5`` would be ignored); a key that a LazyCall node does not list but its
  target accepts as an argument (e.g. ``model.cls_loss.implementation``) is accepted;
- :func:`check_device`: ``train.device`` exists on this machine (a GPU config on a machine
  without CUDA would otherwise fail deep inside torch, after the model is built);
- :func:`check_efl_hyperparameters`: every classification-loss node's hyper-parameters
  are in range (the loss's own checks, reported with the key, e.g. model.cls_loss.scale_factor).
"""

import difflib
import inspect
import os
from typing import Iterator, List, Sequence, Tuple

import torch
from omegaconf import DictConfig, ListConfig

from detectron2.config import LazyConfig
from detectron2.utils.registry import locate

from ..errors import ConfigError
from ..losses import DenseClassificationLoss

__all__ = ["load_config", "apply_overrides", "check_device", "check_efl_hyperparameters"]


def load_config(config_file: str, overrides: Sequence[str] = (), device_check: bool = True):
    """``LazyConfig.load`` + :func:`apply_overrides` + :func:`check_device` (unless not
    ``device_check``: e.g. on a submitting machine without the GPUs) +
    :func:`check_efl_hyperparameters`."""
    if not os.path.isfile(config_file):
        raise ConfigError(f"Config file {config_file} not found (--config-file).")
    cfg = LazyConfig.load(config_file)
    apply_overrides(cfg, overrides)
    if device_check:
        check_device(cfg)
    check_efl_hyperparameters(cfg)
    return cfg


def check_device(cfg) -> None:
    """A ``train.device`` of ``cuda`` needs a CUDA device that torch can use."""
    device = str(cfg.train.get("device", "cpu"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
        raise ConfigError(
            f"The config runs on train.device={device!r}, but torch ({torch.__version__}, "
            f"{build} build) sees no CUDA device on this machine. Add train.device=cpu to the "
            "command line to run on the CPU (slow for the LVIS configs), or run on a machine "
            "with a GPU and a CUDA build of torch (EFL_TORCH_PACKAGES / EFL_TORCH_PIP_ARGS in "
            "scripts/setup_env.sh)."
        )


def apply_overrides(cfg, overrides: Sequence[str]):
    """``LazyConfig.apply_overrides``, one override at a time, refusing unknown keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as e:
            raise ConfigError(
                f"Cannot parse the override {text!r} ({str(e).splitlines()[0]}). Overrides are "
                "key=value, e.g. train.max_iter=100 or 'model.cls_loss.alpha=0.25'."
            ) from None
        _check_key(cfg, override.key_or_group, text)
        LazyConfig.apply_overrides(cfg, [text])
    return cfg


def target_parameters(target) -> List[str]:
    """Keyword arguments ``target`` (a class, function or dotted name) accepts; [] when
    unknown. Follows ``**kwargs`` of ``__init__`` into the base classes."""
    if isinstance(target, str):
        target = locate(target)
    names = []
    for fn in ([c.__init__ for c in inspect.getmro(target)] if inspect.isclass(target) else [target]):
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return names
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return [n for n in names if n != "self"]


def _check_key(cfg, key: str, text: str) -> None:
    node, path = cfg, []
    for part in key.split("."):
        where = ".".join(path) or "the config"
        if isinstance(node, ListConfig):
            if part.isdigit() and int(part) < len(node):
                node, path = node[int(part)], path + [part]
                continue
            raise ConfigError(f"{where} is a list of {len(node)} items: {key!r} (in the override "
                              f"{text!r}) does not name one of them.")
        if not isinstance(node, DictConfig):
            raise ConfigError(f"{where} is a value ({node!r}), not a group: cannot set {key!r} "
                              f"(in the override {text!r}).")
        keys = [str(k) for k in node.keys()]
        if part in keys:
            node, path = node[part], path + [part]
            continue
        accepted = target_parameters(node["_target_"]) if "_target_" in keys else []
        if part in accepted and part == key.split(".")[-1]:
            return  # an argument of the LazyCall's target that the config leaves at its default
        close = difflib.get_close_matches(part, keys + accepted, n=1)
        hint = f" Did you mean '{'.'.join(path + close)}'?" if close else ""
        listing = sorted(set(keys + accepted) - {"_target_"})
        raise ConfigError(
            f"Unknown config key '{key}' in the override {text!r}: {where} has no key "
            f"'{part}'.{hint} Keys of {where}: {', '.join(listing)}."
        )


def _lazy_nodes(node, path: str = "") -> Iterator[Tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for k in node.keys():
            yield from _lazy_nodes(node._get_node(k), f"{path}.{k}" if path else str(k))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _lazy_nodes(node._get_node(i), f"{path}.{i}")


# Dataset-derived arguments without a default, stood in for one class (EQL's frequencies).
_STAND_INS = {"image_frequency": [0.0]}


def check_efl_hyperparameters(cfg) -> None:
    """Instantiate-time ValueErrors of the classification losses (every
    :class:`efl.losses.DenseClassificationLoss` node: EFL, EQFL, focal, QFL, EQL, EQLv2), raised now,
    with the key."""
    for path, node in _lazy_nodes(cfg):
        target = node._target_
        loss_cls = locate(target) if isinstance(target, str) else target
        if not (isinstance(loss_cls, type) and issubclass(loss_cls, DenseClassificationLoss)):
            continue
        parameters = inspect.signature(loss_cls).parameters
        defaults = {n: p.default for n, p in parameters.items()}
        names = [n for n, p in parameters.items() if n not in ("num_classes", "class_groups")
                 and isinstance(p.default, (int, float, str))]
        given = {n: node[n] for n in names if n in node}
        stand_ins = {n: v for n, v in _STAND_INS.items() if n in parameters}
        try:
            loss_cls(1, **stand_ins, **given)
        except (ValueError, TypeError) as e:
            message = str(e)
            bad = next((n for n in given if message.startswith(f"{n} ")), None)
            bad = bad or next((n for n in given if f"{n}=" in message or message.startswith(n)), None)
            bad = bad or next((n for n in given if not isinstance(given[n], (int, float, str))), None)
            if bad is None:
                raise ConfigError(f"{path}: {message}.") from None
            raise ConfigError(
                f"Config key {path}.{bad}={given[bad]!r} is out of range: {message}. Fix it in "
                f"the config file or override it, e.g. {path}.{bad}={defaults[bad]!r} (the "
                "default)."
            ) from None
