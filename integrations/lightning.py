"""A PyTorch Lightning callback that runs a recipe's stages (``pip install 'tunespec[lightning]'``).

```python
stages = StageCallback("two_phase.yaml", monitor="val_acc", model_attr="net")

class Module(lightning.LightningModule):
    def configure_optimizers(self):
        return stages.optimizers()      # the recipe's optimizer and lr schedule, for stage 0

lightning.Trainer(callbacks=[stages], strategy="ddp", ...).fit(Module(), ...)
```
The callback applies stage 0 when fitting starts (before Lightning wraps the model and asks for
the optimizer), and after each training epoch (validation has run by then) gives
``tunespec.StageRunner.step`` the monitored metric; the optimizer and the lr scheduler change in
place as in a hand-written loop.

Strategies: one device, ``DDPStrategy`` (``"ddp"``, ``"ddp_spawn"``, ...) and ``FSDPStrategy``
with ``use_orig_params=True`` (Lightning's default). DDP fixes the parameters it all-reduces
when it is built, so a stage that changes the trainable set has Lightning's strategy build a new
wrapper (``configure_ddp``, with the strategy's own settings and hooks). FSDP with original
parameters re-derives each flat parameter's ``requires_grad`` from the original parameters
before every forward, so it needs no new wrapper; the stage change runs inside
``summon_full_params`` because the plan reads, checks and may write whole tensors.
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path
from typing import Any, Iterator, Mapping

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.nn.parallel import DistributedDataParallel

from tunespec.lifecycle.checkpoint import _check_runner_state, _restore_runner_state, recipe_dict
from tunespec.backend_api import first_line
from tunespec.errors import SpecError
from tunespec.lifecycle.stages import StageRunner
from tunespec.recipe.files import regular_file
from tunespec.recipe.recipe import Recipe
from tunespec.recipe.validate import boolean, excerpt


class StageCallback(pl.Callback):
    def __init__(self, recipe: "Recipe | Mapping[str, Any] | str | Path", monitor: str | None = None,
                 model_attr: str | None = None, steps_per_epoch: int | None = None,
                 allow_pickle: bool = False):
        self.runner = StageRunner(recipe, steps_per_epoch)
        # Under FSDP the callback reads its state from the checkpoint itself (see
        # _replay_before_loading): with weights_only, unless the user trusts the file.
        self.allow_pickle = boolean(allow_pickle, "StageCallback: allow_pickle")
        self.monitor = monitor
        self.model_attr = model_attr  # the attribute holding the network the recipe is written for
        self._optimizer: Any = None
        self._trainer: pl.Trainer | None = None
        self._replayed = False  # the saved stage changes were replayed (resuming)

    def __getattr__(self, name: str) -> Any:
        if name == "schedule":  # renamed in 0.2.0: "schedule" means learning rates
            raise AttributeError("StageCallback.schedule is now StageCallback.runner (the StageRunner; "
                                 "see CHANGELOG.md)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _model(self, pl_module: pl.LightningModule) -> Any:
        if self.model_attr is None:
            return pl_module
        if not hasattr(pl_module, self.model_attr):
            raise SpecError(f"StageCallback: the LightningModule has no attribute {self.model_attr!r}")
        return getattr(pl_module, self.model_attr)

    # --- strategies ---------------------------------------------------------------------------
    @staticmethod
    def _check_strategy(trainer: pl.Trainer) -> None:
        """Refuse strategies whose wrapper would hide a stage change from the optimizer or the
        gradient reduction; checked before stage 0 changes anything."""
        strategy = trainer.strategy
        if isinstance(strategy, FSDPStrategy):
            if not strategy.kwargs.get("use_orig_params"):
                raise SpecError("StageCallback: FSDPStrategy(use_orig_params=False) replaces the model's "
                                "parameters by flat ones that one stage cannot freeze part of; use "
                                "FSDPStrategy(use_orig_params=True) (Lightning's default)")
            return
        if trainer.world_size > 1 and not isinstance(strategy, DDPStrategy):
            raise SpecError(f"StageCallback: strategy {type(strategy).__name__} is not supported on "
                            f"{trainer.world_size} processes; use strategy='ddp' (or 'ddp_spawn') or "
                            f"FSDPStrategy(use_orig_params=True)")

    @staticmethod
    @contextlib.contextmanager
    def _whole_tensors(trainer: pl.Trainer) -> Iterator[None]:
        """Under FSDP the parameters hold shards between steps; a plan reads, checksums and (for
        restore_best) writes whole tensors, so a stage change runs with them gathered."""
        model = trainer.strategy.model
        if not isinstance(trainer.strategy, FSDPStrategy) or model is trainer.lightning_module:
            yield
            return
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model, writeback=True, recurse=True):
            yield

    @staticmethod
    def _trainable(model: Any) -> set[int]:
        return {id(p) for p in model.parameters() if p.requires_grad}

    def _after_change(self, trainer: pl.Trainer, added: set[int]) -> None:
        """Make the strategy see a changed trainable set.

        DDP registers the parameters it all-reduces when it is built, so the strategy builds a new
        wrapper (its own kwargs and comm hooks). FSDP needs none, but its optimizer state dict
        (Lightning's checkpoints) demands for every trainable parameter the state the others have,
        so one that joined and has not stepped yet gets the state its first step would start from.
        """
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
            strategy.model = strategy.lightning_module
            strategy.configure_ddp()
        elif isinstance(strategy, FSDPStrategy):
            opt = self._optimizer
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in added and not opt.state.get(p):
                        state = _first_step_state(opt, group, p)
                        if state is not None:
                            opt.state[p] = state

    # --- hooks ---------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._check_strategy(trainer)
        _, self._optimizer = self.runner.start(self._model(pl_module))
        self._trainer, self._replayed = trainer, False
        if isinstance(trainer.strategy, FSDPStrategy):
            self._replay_before_loading(trainer.strategy)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        vars(trainer.strategy).pop("load_checkpoint", None)  # the hook set in setup, if any

    def _replay_before_loading(self, strategy: FSDPStrategy) -> None:
        """FSDPStrategy loads the optimizer state together with the weights, before callbacks get
        their state, so the stage changes are replayed first, from this callback's state in the
        same file (Lightning unpickles that file right after, as it does for every checkpoint)."""
        load = strategy.load_checkpoint

        def load_checkpoint(checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
            state = self._saved_state(Path(strategy.broadcast(checkpoint_path)))
            if state is not None:
                self._replay(state)
            return load(checkpoint_path, *args, **kwargs)

        strategy.load_checkpoint = load_checkpoint

    def _saved_state(self, path: Path) -> Any:
        """This callback's state in a Lightning checkpoint (a file, or a sharded checkpoint's
        ``meta.pt``), read with ``weights_only`` so that a crafted file runs no code here: a file
        that needs pickle is refused unless ``allow_pickle=True``. A path Lightning cannot read
        either is left to Lightning's loader, which names it."""
        file = path / "meta.pt" if path.is_dir() else path
        where = "StageCallback: resume"
        if not file.exists():
            return None
        regular_file(file, where, None)  # a FIFO would block, a directory is no checkpoint
        try:
            meta = torch.load(file, map_location="cpu", weights_only=not self.allow_pickle,
                              mmap=not path.is_dir())
        except pickle.UnpicklingError as exc:
            if self.allow_pickle:
                raise SpecError(f"{where}: {str(file)!r} is not a readable checkpoint "
                                f"({excerpt(str(exc))})") from None
            raise SpecError(f"{where}: {str(file)!r} holds objects that only unpickling can read, which "
                            f"runs code from the file; for a checkpoint you trust pass "
                            f"StageCallback(..., allow_pickle=True) ({excerpt(first_line(exc))})") from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise SpecError(f"{where}: {str(file)!r} is not a readable Lightning checkpoint "
                            f"({excerpt(first_line(exc))})") from None
        callbacks = meta.get("callbacks") if isinstance(meta, dict) else None
        if not isinstance(callbacks, dict):
            raise SpecError(f"{where}: {str(file)!r} is not a Lightning checkpoint (no callbacks "
                            f"state); resume from a checkpoint of a run with this callback")
        return callbacks.get(self.state_key)

    def optimizers(self) -> Any:
        """What ``configure_optimizers`` returns: the optimizer, with the lr schedule stepped per step."""
        if self._optimizer is None:
            raise SpecError("StageCallback.optimizers: the callback has not set up yet; pass it to "
                            "lightning.Trainer(callbacks=[...]) and call this from configure_optimizers")
        if self.runner.lr_scheduler is None:
            return self._optimizer
        return {"optimizer": self._optimizer,
                "lr_scheduler": {"scheduler": self.runner.lr_scheduler, "interval": "step"}}

    def _metric(self, trainer: pl.Trainer) -> float | None:
        """The monitored metric, rank 0's on every rank: ranks that decided a plateau differently
        would change stage apart and deadlock in the next all-reduce (log it with sync_dist=True
        to decide on the mean over ranks)."""
        if self.monitor is None:
            return None
        if self.monitor not in trainer.callback_metrics:
            raise SpecError(f"StageCallback: monitor {self.monitor!r} was not logged (logged: "
                            f"{', '.join(trainer.callback_metrics) or 'nothing'}); self.log() it")
        metric = float(trainer.callback_metrics[self.monitor])
        return trainer.strategy.broadcast(metric, 0) if trainer.world_size > 1 else metric

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metric = self._metric(trainer)
        configs = trainer.lr_scheduler_configs
        model = self._model(pl_module)
        before = self._trainable(model)
        with self._whole_tensors(trainer):
            self.runner.step(trainer.current_epoch, model, trainer.optimizers[0], metric=metric,
                               lr_scheduler=configs[0].scheduler if configs else None)
        after = self._trainable(model)
        if after != before:
            self._after_change(trainer, after - before)

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The stage runner's state, the recipe and stage spec it ran (checked on resume) and the best
        weights a later ``restore_best`` stage needs, as tensors (Lightning saves with torch)."""
        best = self.runner.best_state
        return {"schedule": self.runner.state_dict(), "recipe": recipe_dict(self.runner),
                "spec": self.runner.stage.spec.to_dict(),
                "best_state": None if best is None else {k: torch.from_numpy(v) for k, v in best.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume (``trainer.fit(..., ckpt_path=...)``): replay the stage changes the run made,
        so the optimizer has the saved run's groups before Lightning loads its state into it.

        Lightning calls this after ``setup`` (stage 0 applied) and after loading the weights;
        under DDP before it wraps the model (so DDP is built for the saved stage), under FSDP after.
        """
        if self._trainer is None or self._optimizer is None:
            raise SpecError("StageCallback.load_state_dict: the callback has not set up yet; resume "
                            "through lightning.Trainer(callbacks=[...]).fit(..., ckpt_path=...)")
        if self._replayed:  # under FSDP, from this very state before the weights were loaded
            with self._whole_tensors(self._trainer):
                self.runner.rebaseline()
            return
        self._replay(state_dict)

    def _replay(self, state_dict: Any) -> None:
        if not isinstance(state_dict, dict) or "schedule" not in state_dict:
            raise SpecError(f"StageCallback: the checkpoint's callback state {excerpt(state_dict)} is "
                            f"not a StageCallback's; resume from a checkpoint of a run with this callback")
        state = _check_runner_state(state_dict, self.runner, "StageCallback: resume")
        index = state["index"]
        if self.runner.index != 0:
            raise SpecError(f"StageCallback: resume: the stage runner is already in stage "
                            f"{self.runner.stage.name!r}; resume with a new StageCallback")
        if self.runner.stages[index].spec.to_dict() != state_dict.get("spec"):
            raise SpecError(f"StageCallback: resume: stage {self.runner.stages[index].name!r} of this "
                            f"recipe is not the spec the run was saved with; resume with the run's recipe")
        best = state_dict.get("best_state")
        trainer = self._trainer
        model = self._model(trainer.lightning_module)
        before = self._trainable(model)
        with self._whole_tensors(trainer):
            for _ in range(index):
                self.runner.advance(model, self._optimizer)
            _restore_runner_state(self.runner, state,
                                  None if best is None else {k: v.clone().numpy() for k, v in best.items()})
        self._replayed = True
        after = self._trainable(model)
        if after != before:
            self._after_change(trainer, after - before)


def _first_step_state(optimizer: torch.optim.Optimizer, group: dict, p: torch.Tensor) -> dict | None:
    """The state torch's optimizer creates at ``p``'s first step, where starting from it gives the
    very step a fresh parameter would take: zero moments and step 0 for Adam and AdamW, a zero
    momentum buffer for SGD without dampening (0 * momentum + grad is grad). None otherwise."""
    if isinstance(optimizer, torch.optim.SGD):
        if group["momentum"] == 0 or group["dampening"] != 0:
            return None
        return {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)}
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        if group.get("capturable") or group.get("fused"):
            return None
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        state = {"step": torch.tensor(0.0, dtype=scalar),
                 "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                 "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        if group.get("amsgrad"):
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state
    return None
