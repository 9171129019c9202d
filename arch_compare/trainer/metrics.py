"""Per-step metrics to `MODEL_DIR/metrics.jsonl` and TensorBoard event files.

On resume the JSONL file is cut back to the restored step, so a resumed run's file equals an
uninterrupted run's line for line; TensorBoard itself drops events from an abandoned future.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
    def __init__(self, model_dir: str | Path, resume_step: int = 0, name: str = "train"):
        self.path = Path(model_dir) / METRICS_FILE
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = self.path.open("a")
        self._summary = tf.summary.create_file_writer(str(Path(model_dir) / TENSORBOARD_DIR / name))

    def write(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        record = {"step": step, "kind": kind, **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        with self._summary.as_default():
            for name, value in metrics.items():
                tf.summary.scalar(f"{kind}/{name}", float(value), step=step)
        self._summary.flush()

    def close(self) -> None:
        self._file.close()
        self._summary.close()
