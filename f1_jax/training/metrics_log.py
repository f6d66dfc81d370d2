"""Where a run's numbers go: a console progress bar, TensorBoard and `metrics.jsonl`.

Only process 0 writes. `metrics.jsonl` (one JSON object per logged step) is kept whole in memory
and rewritten at each flush, so it works the same on local disks and object stores (which
cannot append) and a reader never sees a half-written line.
"""

import json
import time

import jax
import numpy as np
import tqdm
from etils import epath


class MetricsLogger:
    """Console progress bar, TensorBoard and metrics.jsonl of one run (process 0 only)."""

    def __init__(
        self,
        metrics_path: epath.Path,
        tensorboard_dir: epath.Path,
        start: int,
        total: int,
        batch_size: int,
    ):
        self.active = jax.process_index() == 0
        self.batch_size = batch_size
        self.path = metrics_path
        self.writer = None
        self.bar = None
        self.lines: list[str] = []
        if self.active:
            from flax.metrics import tensorboard  # TensorFlow only in logging, never in the step

            self.writer = tensorboard.SummaryWriter(str(tensorboard_dir))
            self.bar = tqdm.tqdm(
                total=total,
                initial=start,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
            )
            if metrics_path.exists():
                self.lines = metrics_path.read_text().splitlines()
        self.last_time, self.last_step = time.time(), start

    def scalars(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if not self.active:
            return
        now = time.time()
        if prefix == "train" and step > self.last_step:
            rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
            metrics = dict(metrics, steps_per_sec=rate, examples_per_sec=rate * self.batch_size)
            self.last_time, self.last_step = now, step
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
        for name, value in metrics.items():
            self.writer.scalar(f"{prefix}/{name}", value, step)
        self.writer.flush()
        self.lines.append(json.dumps({"step": step, "split": prefix, **metrics}))
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")

    def advance(self, step: int) -> None:
        if self.active:
            self.bar.update(step - self.bar.n)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if self.active:
            self.writer.image(name, image, step)

    def close(self) -> None:
        if self.active:
            self.bar.close()
            self.writer.close()
