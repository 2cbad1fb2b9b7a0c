"""A PyTorch Lightning callback that runs a recipe's stages (``pip install 'tunespec[lightning]'``).

```python
stages = StageCallback("two_phase.yaml", monitor="val_acc", model_attr="net")

class Module(lightning.LightningModule):
    def configure_optimizers(self):
        return stages.optimizers()      # the recipe's optimizer and lr schedule, for stage 0

lightning.Trainer(callbacks=[stages], ...).fit(Module(), ...)
```
The callback applies stage 0 when fitting starts (before Lightning asks for the optimizer), and
after each training epoch (validation has run by then) gives ``tunespec.StageRunner.step`` the
monitored metric; the optimizer and the lr scheduler change in place as in a hand-written loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import lightning.pytorch as pl

from tunespec.errors import SpecError
from tunespec.recipe import Recipe
from tunespec.stages import StageRunner


class StageCallback(pl.Callback):
    def __init__(self, recipe: "Recipe | Mapping[str, Any] | str | Path", monitor: str | None = None,
                 model_attr: str | None = None, steps_per_epoch: int | None = None):
        self.schedule = StageRunner(recipe, steps_per_epoch)
        self.monitor = monitor
        self.model_attr = model_attr  # the attribute holding the network the recipe is written for
        self._optimizer: Any = None

    def _model(self, pl_module: pl.LightningModule) -> Any:
        if self.model_attr is None:
            return pl_module
        if not hasattr(pl_module, self.model_attr):
            raise SpecError(f"StageCallback: the LightningModule has no attribute {self.model_attr!r}")
        return getattr(pl_module, self.model_attr)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise SpecError("StageCallback: under DDP a stage change must re-wrap the model, and "
                            "Lightning's strategy owns the wrapper; run distributed stages in a plain "
                            "loop with tunespec.StageRunner (it re-wraps), or train one stage per fit")
        _, self._optimizer = self.schedule.start(self._model(pl_module))

    def optimizers(self) -> Any:
        """What ``configure_optimizers`` returns: the optimizer, with the lr schedule stepped per step."""
        if self._optimizer is None:
            raise SpecError("StageCallback.optimizers: the callback has not set up yet; pass it to "
                            "lightning.Trainer(callbacks=[...]) and call this from configure_optimizers")
        if self.schedule.lr_scheduler is None:
            return self._optimizer
        return {"optimizer": self._optimizer,
                "lr_scheduler": {"scheduler": self.schedule.lr_scheduler, "interval": "step"}}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metric = None
        if self.monitor is not None:
            if self.monitor not in trainer.callback_metrics:
                raise SpecError(f"StageCallback: monitor {self.monitor!r} was not logged (logged: "
                                f"{', '.join(trainer.callback_metrics) or 'nothing'}); self.log() it")
            metric = float(trainer.callback_metrics[self.monitor])
        configs = trainer.lr_scheduler_configs
        self.schedule.step(trainer.current_epoch, self._model(pl_module), trainer.optimizers[0],
                           metric=metric, lr_scheduler=configs[0].scheduler if configs else None)

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("index", 0) > 0:
            raise SpecError("StageCallback: resuming a Lightning run after a stage change is not "
                            "supported (Lightning rebuilds the optimizer of stage 0 before loading its "
                            "state); use tunespec.save_checkpoint / tunespec.resume in a plain loop")
