"""The process's random number generators (python ``random``, numpy's global generator,
torch's CPU and CUDA generators) as checkpoint-friendly state: tensors and plain Python
numbers only, so ``torch.load(..., weights_only=True)`` reads it back."""

import contextlib
import random
from typing import Dict

import numpy as np
import torch

__all__ = ["get_rng_state", "set_rng_state", "preserve_rng_state", "seed_sample_rngs"]


def get_rng_state() -> Dict:
    """The state of every global generator of this process."""
    version, mt, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserve_rng_state():
    """Run a block without changing the CPU generators' states as seen from outside it
    (the block may reseed or draw from them freely)."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)


def seed_sample_rngs(*key: int) -> None:
    """Seed python, numpy and torch's CPU generator from ``key`` (e.g. (seed, iteration,
    slot)), so whatever random choices follow depend on ``key`` alone."""
    seed = int(np.random.SeedSequence([k % 2**64 for k in key]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
