"""Training checkpoints (orbax): periodic saves, keep the newest N, exact resume.

A checkpoint holds the training state (step, parameters, optimizer state) and the data
iterator's position, so a resumed run continues with exactly the batches it would have seen.
`MODEL_DIR/model_config.json` records the model a directory belongs to; resuming with another
model, or from a checkpoint that cannot be restored, is refused with the reason — never replaced
by a fresh start.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from arch_compare.models.config import ModelConfig
from arch_compare.models.hf.checkpoint import CheckpointError
from arch_compare.models.loading import CHECKPOINT_DIR, ITEM_NAMES
from arch_compare.models.native import CONFIG_FILE
from arch_compare.trainer.steps import TrainState


def _as_tree(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


class Checkpoints:
    def __init__(self, model_dir: str | Path, config: ModelConfig, keep: int = 3):
        self.model_dir = Path(model_dir).absolute()
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self._check_model_config(config)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.model_dir / CHECKPOINT_DIR, options=options,
                                              item_names=ITEM_NAMES)

    def _check_model_config(self, config: ModelConfig) -> None:
        path = self.model_dir / CONFIG_FILE
        if path.exists():
            # Execution fields (dtypes, remat) may change between runs of one model.
            recorded = ModelConfig.from_dict(json.loads(path.read_text())).architecture_dict()
            current = config.architecture_dict()
            differences = sorted(k for k in set(recorded) | set(current)
                                 if recorded.get(k) != current.get(k))
            if differences:
                raise CheckpointError(
                    f"{path}: this model directory belongs to a different model (fields "
                    f"{', '.join(differences)} differ); use a new MODEL_DIR")
        else:
            path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, state: TrainState, data_position: int) -> None:
        step = int(jax.device_get(state.step))
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_as_tree(state)),
            data=ocp.args.JsonSave({"position": data_position, "step": step})))
        self._manager.wait_until_finished()

    def restore(self, abstract_state: TrainState, step: int | None = None
                ) -> tuple[TrainState, int]:
        """The state at `step` (default: the newest) and the data position saved with it."""
        step = self.latest_step if step is None else step
        where = self.model_dir / CHECKPOINT_DIR / str(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_as_tree(abstract_state)),
                data=ocp.args.JsonRestore()))
        except Exception as error:  # orbax raises many types; all mean "cannot resume from it"
            raise CheckpointError(f"{where}: cannot restore this checkpoint ({error}); it is "
                                  f"corrupt or belongs to another run. Nothing was overwritten; "
                                  f"move it away to resume from an earlier one") from error
        tree = restored["state"]
        return TrainState(tree["step"], tree["params"], tree["opt_state"]), int(
            restored["data"]["position"])

    def close(self) -> None:
        self._manager.close()
