"""Where a run's numbers go: a console progress bar, TensorBoard event files and `metrics.jsonl`.

Only process 0 writes, through `etils.epath`, so a `gs://` workdir works like a local one.
Object stores cannot append, so:
  - `metrics.jsonl` (one JSON object per logged step) is kept whole in memory and rewritten at
    most every `flush_seconds` (and at the end); a reader never sees a half-written line;
  - TensorBoard events are buffered and each flush writes a new event file
    (`events.out.tfevents.<start>.<host>.<n>`); TensorBoard reads every file of the directory.
Events are written with the `tensorboard` package's protos, without TensorFlow.
"""

import io
import json
import socket
import time

import jax
import numpy as np
import tqdm
from etils import epath
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class EventFiles:
    """TensorBoard scalars and images, one new event file per flush."""

    def __init__(self, directory: epath.Path):
        self.directory = directory
        self.prefix = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self.pending: list[event_pb2.Event] = []
        self.count = 0

    def scalar(self, tag: str, value: float, step: int) -> None:
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]
        )
        self.pending.append(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """image: uint8 [H, W, 3]."""
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        encoded = summary_pb2.Summary.Image(
            height=image.shape[0], width=image.shape[1], colorspace=3,
            encoded_image_string=png.getvalue(),
        )  # fmt: skip
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=encoded)])
        self.pending.append(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        if not self.pending:
            return
        buffer = io.BytesIO()
        records = RecordWriter(buffer)
        header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        for event in [header, *self.pending]:
            records.write(event.SerializeToString())
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"{self.prefix}.{self.count:06d}").write_bytes(buffer.getvalue())
        self.pending, self.count = [], self.count + 1


class MetricsLogger:
    """Console progress bar, TensorBoard and metrics.jsonl of one run (process 0 only)."""

    def __init__(
        self,
        metrics_path: epath.Path,
        tensorboard_dir: epath.Path,
        start: int,
        total: int,
        batch_size: int,
        flush_seconds: float = 30.0,
    ):
        self.active = jax.process_index() == 0
        self.batch_size = batch_size
        self.path = metrics_path
        self.flush_seconds = flush_seconds
        self.events = EventFiles(tensorboard_dir)
        self.bar = None
        self.lines: list[str] = []
        if self.active:
            self.bar = tqdm.tqdm(
                total=total,
                initial=start,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
            )
            if metrics_path.exists():  # a resumed run: keep what led up to its checkpoint
                lines = metrics_path.read_text().splitlines()
                self.lines = [line for line in lines if json.loads(line)["step"] <= start]
        self.last_time, self.last_step = time.time(), start
        self.last_flush = time.time()

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
            self.events.scalar(f"{prefix}/{name}", value, step)
        self.lines.append(json.dumps({"step": step, "split": prefix, **metrics}))
        if now - self.last_flush >= self.flush_seconds:
            self.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if self.active:
            self.events.image(name, image, step)

    def advance(self, step: int) -> None:
        if self.active:
            self.bar.update(step - self.bar.n)

    def flush(self) -> None:
        """Writes metrics.jsonl and a new TensorBoard event file (process 0)."""
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n" if self.lines else "")
        self.events.flush()
        self.last_flush = time.time()

    def close(self) -> None:
        if self.active:
            self.flush()
            self.bar.close()
