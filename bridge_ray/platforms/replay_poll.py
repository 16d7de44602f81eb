"""verl plugin: the PPO trainer picks up finished rollouts within 0.1 s, not within 2 s.

verl 0.9.1's v1 trainer dispatches a step's prompts to the rollout, then waits in
``ReplayBuffer.sample`` (``verl/trainer/ppo/v1/replay_buffer.py``), which checks the
TransferQueue for finished trajectories and, while the batch is incomplete, sleeps
``poll_interval`` seconds: 2.0, a constructor default that no config key reaches. Every
rollout therefore takes a whole multiple of ~2 s: on one H100 the small model's generation
took 2.07-2.09 s every step, and the 1B shape's 8.07, 10.07-10.10 and 12.11 s (2026-12-06).
In sync mode (the default) nothing else reads the interval; this plugin makes it 0.1 s there,
which costs ten small TransferQueue metadata queries a second while a rollout runs. verl's
asynchronous trainer (``trainer_separate_async``) also uses the interval as its idle threshold,
so other modes keep verl's value.

verl imports this module in every process at ``import verl`` (``VERL_USE_EXTERNAL_MODULES``,
``bridge_ray.ppo.config.verl_plugins``). Importing the replay buffer there would add ~4.6 s to
each of them, so the plugin patches the module when something imports it (the trainer), with
an import hook; its file stays untouched. Drop this when verl exposes the interval.
"""
from __future__ import annotations

import functools
import importlib.abc
import sys

REPLAY_BUFFER_MODULE = "verl.trainer.ppo.v1.replay_buffer"
POLL_INTERVAL_S = 0.1
VERL_POLL_INTERVAL_S = 2.0  # verl 0.9.1's default; an interval someone chose otherwise is kept


def patch(module) -> None:
    """Make sync-mode ``ReplayBuffer``s of ``module`` poll every ``POLL_INTERVAL_S`` (once per module)."""
    cls = module.ReplayBuffer
    verl_init = cls.__init__
    if getattr(verl_init, "bridge_ray_poll", False):
        return

    @functools.wraps(verl_init)
    def __init__(self, *args, **kwargs):
        verl_init(self, *args, **kwargs)
        if self.trainer_mode == "sync" and self.poll_interval == VERL_POLL_INTERVAL_S:
            self.poll_interval = POLL_INTERVAL_S

    __init__.bridge_ray_poll = True
    cls.__init__ = __init__


class _PatchingLoader(importlib.abc.Loader):
    """The replay buffer's own loader; ``patch`` runs once the module has executed."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        patch(module)

    def __getattr__(self, name):  # get_source, get_code, ...: tracebacks still show verl's lines
        return getattr(self.loader, name)


class _ReplayBufferHook(importlib.abc.MetaPathFinder):
    """Finds the replay buffer module as Python would, and hands it to ``_PatchingLoader``."""

    def find_spec(self, fullname, path, target=None):
        if fullname != REPLAY_BUFFER_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Patch the replay buffer now if it is imported, else when it is (importing this module does it once)."""
    if REPLAY_BUFFER_MODULE in sys.modules:
        patch(sys.modules[REPLAY_BUFFER_MODULE])
    elif not any(isinstance(finder, _ReplayBufferHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ReplayBufferHook())


install()
