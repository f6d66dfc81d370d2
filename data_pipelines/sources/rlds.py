"""Any RLDS / TFDS dataset by configuration: which features are the cameras, the state, the action
and the instruction, the gripper's dims and convention, the control frequency, and a few named
per-step operations (the transforms Octo and OpenVLA write as code per dataset).

A configuration is a plain mapping (a recipe's `DatasetConfig.rlds`, a JSON file for
`python -m data_pipelines.convert stats --rlds_config`), checked by `RldsSpec.from_mapping`:

    {
      "name": "my_robot",                        # used in messages
      "cameras": {"primary": "image", "wrist": "wrist_image"},   # standard camera -> key under
                                                 # steps/observation (None or absent: no camera)
      "state":  [{"key": "observation/state", "slice": [0, 7]}, {"zeros": 1}],
      "action": [{"key": "action", "slice": [0, 6]},
                 {"key": "action", "slice": [6, 7], "op": "binarize_gripper"}],
      "language": "language_instruction",        # path under steps (first step's text), or None
      "gripper": {"dims": [6], "convention": "1_open_0_closed"},
      "control_frequency": 10,                   # Hz, as recorded (documentation and checks)
    }

State and action are concatenations of parts, in order. A part is {"key": path under `steps/`,
"slice": [start, stop] of its last axis (default: all), "dims": the feature's width (checked
against features.json before any record is read; default: at least `stop`), "op": one of OPS}
or {"zeros": n} (n zero columns, e.g. Octo's state pad). Per-episode options: "skip_first_steps"
(Bridge's all-zero first action), "camera_present" ({image key: episode_metadata path of a bool}
saying whether the episode recorded that camera), "sample_range" ([start, end] episode_metadata
paths of the drawable steps: segment records), "supported" and "unsupported_hints" (for
messages), "version" (pins TRANSFORM_VERSION; default: a hash of the configuration, so a changed
configuration never reuses cached statistics).

Order within an episode: the first `skip_first_steps` steps are dropped; each part's op runs on
the remaining steps; a "next_minus_current" part (x[t+1] - x[t]) has no value at the last step,
which is then dropped from every array and camera. The instruction is the recorded episode's
first step's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from data_pipelines import schema
from f1_common.transforms import CAMERAS, MAX_DIM

KIND = "rlds"

# Gripper action conventions: name -> (scale, offset) with open_positive = scale * x + offset
# (1 open .. 0 closed), used by DataConfig.gripper_convention="open_is_positive".
GRIPPER_CONVENTIONS: Mapping[str, tuple[float, float]] = {
    "1_open_0_closed": (1.0, 0.0),
    "0_open_1_closed": (-1.0, 1.0),  # closedness (AgiBot)
    "-1_open_1_closed": (-0.5, 0.5),  # LIBERO
    "1_open_-1_closed": (0.5, 0.5),
}

OPEN_THRESHOLD = 0.95
CLOSED_THRESHOLD = 0.05


def binarize_gripper(gripper: np.ndarray) -> np.ndarray:
    """Continuous gripper command [T] in [0, 1] -> {0 closed, 1 open} [T] float32 (Octo/OpenVLA's
    Bridge rule).

    Undecided values (between the thresholds) take the next decided value in time, since the
    operator was moving towards it; a trailing undecided run keeps the last decided value (or
    the rounded value if there is none).
    """
    g = np.asarray(gripper, np.float32)
    out = np.zeros_like(g)
    decided_open = g > OPEN_THRESHOLD
    decided = decided_open | (g < CLOSED_THRESHOLD)
    carry = float(decided_open[-1])
    for i in range(len(g) - 1, -1, -1):
        if decided[i]:
            carry = float(decided_open[i])
        out[i] = carry
    return out


def relative_to_absolute_gripper(rel: np.ndarray) -> np.ndarray:
    """Relative gripper commands [T] (+1 close, -1 open, ~0 keep) -> absolute [T], 1 open / 0
    closed (Octo's RT-1 rule).

    Before the first command the gripper is in the state opposite to that command (open if the
    episode never commands it), and each command holds until the next one.
    """
    rel = np.asarray(rel, np.float32)
    cmd = np.where(rel < -0.1, 1.0, np.where(rel > 0.1, -1.0, 0.0))  # +1 = open, -1 = close
    nonzero = np.flatnonzero(cmd)
    state = -cmd[nonzero[0]] if len(nonzero) else 1.0
    out = np.empty_like(cmd)
    for i, c in enumerate(cmd):
        if c != 0:
            state = c
        out[i] = state
    return (out / 2 + 0.5).astype(np.float32)


def _columns(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.stack([fn(x[:, j]) for j in range(x.shape[1])], axis=1)


# Per-part operations on [T, k] columns (T = steps after skip_first_steps).
OPS: Mapping[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "identity": lambda x: x,
    "binarize_gripper": _columns(binarize_gripper),
    "relative_to_absolute_gripper": _columns(relative_to_absolute_gripper),
    "next_minus_current": None,  # x[t+1] - x[t]: handled by the episode (drops the last step)
}


class ConfigError(ValueError):
    """An RLDS configuration that cannot describe a dataset."""


def load_config(value: Any, dataset: str = "") -> dict[str, Any] | None:
    """A configuration given as a mapping, JSON text or the path of a JSON file (local or a URI
    TensorFlow can read); None or "" for none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
        return dict(value.to_dict() if hasattr(value, "to_dict") else value)
    text, where = str(value), "JSON text"
    if not text.lstrip().startswith("{"):
        where = text
        try:
            if "://" in text:
                import tensorflow as tf  # deferred: TensorFlow loads in seconds; only to read a URI (gs://)

                text = tf.io.gfile.GFile(text).read()
            else:
                with open(text) as f:
                    text = f.read()
        except (OSError, Exception) as e:  # tf.errors.NotFoundError is not an OSError
            raise ConfigError(
                f"dataset {dataset!r}: cannot read rlds config {where}: {e}"
            ) from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"dataset {dataset!r}: rlds config {where} is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"dataset {dataset!r}: rlds config {where} is not a JSON object")
    return config


@dataclasses.dataclass(frozen=True)
class Part:
    """One block of the state or action vector: columns [start, stop) of the per-step feature
    `key` (a path under steps/), through `op`; or `zeros` zero columns."""

    key: str | None = None
    start: int = 0
    stop: int | None = None
    dims: int | None = None
    op: str = "identity"
    zeros: int = 0

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any], where: str) -> "Part":
        m = dict(m)
        unknown = set(m) - {"key", "slice", "dims", "op", "zeros"}
        if unknown:
            raise ConfigError(f"{where}: unknown fields {sorted(unknown)}")
        if "zeros" in m:
            if set(m) != {"zeros"} or int(m["zeros"]) < 1:
                raise ConfigError(f"{where}: a zeros part is {{'zeros': n >= 1}} alone, got {m}")
            return cls(zeros=int(m["zeros"]))
        if not m.get("key"):
            raise ConfigError(f"{where}: a part needs a 'key' (a feature path under steps/)")
        start, stop = 0, None
        if m.get("slice") is not None:
            sl = list(m["slice"])
            if len(sl) != 2 or not 0 <= int(sl[0]) < int(sl[1]):
                raise ConfigError(f"{where}: slice must be [start, stop) with start < stop")
            start, stop = int(sl[0]), int(sl[1])
        op = m.get("op", "identity")
        if op not in OPS:
            raise ConfigError(f"{where}: unknown op {op!r}; expected one of {sorted(OPS)}")
        dims = None if m.get("dims") is None else int(m["dims"])
        if dims is not None and stop is not None and stop > dims:
            raise ConfigError(f"{where}: slice stop {stop} beyond the feature's {dims} dims")
        return cls(key=str(m["key"]), start=start, stop=stop, dims=dims, op=op)

    def to_json(self) -> dict[str, Any]:
        if self.zeros:
            return {"zeros": self.zeros}
        out: dict[str, Any] = {"key": self.key, "op": self.op}
        if self.stop is not None:
            out["slice"] = [self.start, self.stop]
        if self.dims is not None:
            out["dims"] = self.dims
        return out

    def width(self, feature_width: int) -> int:
        return self.zeros or (self.stop if self.stop is not None else feature_width) - self.start


def _at(tree: Mapping[str, Any], path: str, what: str) -> Any:
    node: Any = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            keys = sorted(node) if isinstance(node, Mapping) else []
            raise schema.SchemaError(f"{what}: no feature {path!r} (at {part!r}; keys {keys})")
        node = node[part]
    return node


@dataclasses.dataclass(frozen=True)
class RldsSpec:
    """A checked RLDS configuration (see the module docstring for the fields)."""

    name: str
    cameras: Mapping[str, str | None]
    state: tuple[Part, ...]
    action: tuple[Part, ...]
    language: str | None = "language_instruction"
    gripper_dims: tuple[int, ...] = ()
    gripper_convention: str = "1_open_0_closed"
    control_frequency: float | None = None
    skip_first_steps: int = 0
    camera_present: Mapping[str, str] = dataclasses.field(default_factory=dict)
    sample_range: tuple[str, str] | None = None
    supported: str = ""
    unsupported_hints: Mapping[str, str] = dataclasses.field(default_factory=dict)
    version: str | None = None

    FIELDS = (
        "name",
        "cameras",
        "state",
        "action",
        "language",
        "gripper",
        "control_frequency",
        "skip_first_steps",
        "camera_present",
        "sample_range",
        "supported",
        "unsupported_hints",
        "version",
    )

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any], dataset: str = "") -> "RldsSpec":
        """Checks and parses a configuration; errors name `dataset` and the field."""
        m = dict(m.to_dict() if hasattr(m, "to_dict") else m)
        where = f"dataset {dataset!r} rlds config" if dataset else "rlds config"
        unknown = set(m) - set(cls.FIELDS)
        if unknown:
            raise ConfigError(f"{where}: unknown fields {sorted(unknown)}; expected {cls.FIELDS}")
        for required in ("cameras", "state", "action"):
            if required not in m:
                raise ConfigError(f"{where}: '{required}' is required")
        cameras = dict(m["cameras"])
        bad = set(cameras) - set(CAMERAS)
        if bad:
            raise ConfigError(f"{where}: unknown cameras {sorted(bad)}; expected {CAMERAS}")
        parts = {}
        for field in ("state", "action"):
            if not m[field]:
                raise ConfigError(f"{where}: '{field}' needs at least one part")
            parts[field] = tuple(
                Part.from_mapping(p, f"{where} {field}[{i}]") for i, p in enumerate(m[field])
            )
        if not any(p.key for p in parts["action"]):
            raise ConfigError(f"{where}: 'action' needs a part read from a feature")
        if any(p.op != "identity" for p in parts["state"]):
            raise ConfigError(f"{where}: state parts take no op (states are measurements)")
        gripper = dict(m.get("gripper") or {})
        if set(gripper) - {"dims", "convention"}:
            raise ConfigError(f"{where}: gripper has fields 'dims' and 'convention' only")
        convention = gripper.get("convention", "1_open_0_closed")
        if convention not in GRIPPER_CONVENTIONS:
            raise ConfigError(
                f"{where}: unknown gripper convention {convention!r}; expected one of "
                f"{sorted(GRIPPER_CONVENTIONS)}"
            )
        dims = tuple(int(d) for d in gripper.get("dims", ()))
        sample_range = m.get("sample_range")
        if sample_range is not None and len(sample_range) != 2:
            raise ConfigError(f"{where}: sample_range is [start path, end path]")
        freq = m.get("control_frequency")
        if freq is not None and not float(freq) > 0:
            raise ConfigError(f"{where}: control_frequency must be > 0 Hz, got {freq}")
        skip = int(m.get("skip_first_steps", 0))
        if skip < 0:
            raise ConfigError(f"{where}: skip_first_steps must be >= 0")
        spec = cls(
            name=str(m.get("name") or dataset or KIND),
            cameras=cameras,
            state=parts["state"],
            action=parts["action"],
            language=m.get("language", "language_instruction"),
            gripper_dims=dims,
            gripper_convention=convention,
            control_frequency=None if freq is None else float(freq),
            skip_first_steps=skip,
            camera_present=dict(m.get("camera_present") or {}),
            sample_range=None if sample_range is None else tuple(sample_range),
            supported=str(m.get("supported", "")),
            unsupported_hints=dict(m.get("unsupported_hints") or {}),
            version=m.get("version"),
        )
        widths = {f: spec.known_width(getattr(spec, f)) for f in ("state", "action")}
        for f, w in widths.items():
            if w is not None and w > MAX_DIM:
                raise ConfigError(f"{where}: {f} has {w} dims, more than {MAX_DIM}")
        if dims and widths["action"] is not None and max(dims) >= widths["action"]:
            raise ConfigError(
                f"{where}: gripper dims {list(dims)} outside the {widths['action']} action dims"
            )
        return spec

    @staticmethod
    def known_width(parts: Sequence[Part]) -> int | None:
        """The width of a concatenation when every part's width is known without the data."""
        total = 0
        for p in parts:
            if p.zeros:
                total += p.zeros
            elif p.stop is not None:
                total += p.stop - p.start
            elif p.dims is not None:
                total += p.dims - p.start
            else:
                return None
        return total

    def to_json(self) -> dict[str, Any]:
        """The canonical mapping (from_mapping(to_json()) == self)."""
        return {
            "name": self.name,
            "cameras": dict(self.cameras),
            "state": [p.to_json() for p in self.state],
            "action": [p.to_json() for p in self.action],
            "language": self.language,
            "gripper": {"dims": list(self.gripper_dims), "convention": self.gripper_convention},
            "control_frequency": self.control_frequency,
            "skip_first_steps": self.skip_first_steps,
            "camera_present": dict(self.camera_present),
            "sample_range": None if self.sample_range is None else list(self.sample_range),
            "supported": self.supported,
            "unsupported_hints": dict(self.unsupported_hints),
            "version": self.version,
        }

    def fingerprint(self) -> str:
        """A hash of what the configuration does to records (messages and version excluded)."""
        what = self.to_json()
        for k in ("name", "supported", "unsupported_hints", "version", "control_frequency"):
            what.pop(k)
        blob = json.dumps(what, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class RldsSource:
    """A configured RLDS dataset behind the interface of a source module (`sources/__init__.py`):
    KIND, TRANSFORM_VERSION, DEFAULT_CAMERAS, SUPPORTED, REQUIRED_FEATURES, UNSUPPORTED_HINTS,
    GRIPPER_OPEN_POSITIVE, CONTROL_FREQUENCY and standardize(raw, name, episode_id, cameras)."""

    def __init__(self, spec: RldsSpec, kind: str = KIND):
        self.spec = spec
        self.KIND = kind
        # Named datasets pin their version (the statistics caches written before they became
        # configurations stay valid); any other configuration is keyed on its content.
        self.TRANSFORM_VERSION = spec.version or f"rlds-{spec.fingerprint()}"
        self.DEFAULT_CAMERAS = dict(spec.cameras)
        self.SUPPORTED = (
            spec.supported or f"RLDS datasets with the features of config {spec.name!r}"
        )
        self.UNSUPPORTED_HINTS = dict(spec.unsupported_hints)
        self.CONTROL_FREQUENCY = spec.control_frequency
        scale_offset = GRIPPER_CONVENTIONS[spec.gripper_convention]
        self.GRIPPER_OPEN_POSITIVE = {d: scale_offset for d in spec.gripper_dims}
        self.REQUIRED_FEATURES = self._required()

    def _required(self) -> dict[str, Any]:
        """feature path -> "text" | "image" | exact shape tuple | int (a tensor at least this
        wide); the camera images are added by `check_layout` from the configured cameras."""
        out: dict[str, Any] = {}
        for p in (*self.spec.state, *self.spec.action):
            if p.zeros:
                continue
            path = f"steps/{p.key}"
            if p.dims is not None:
                out[path] = (p.dims,)
            elif not isinstance(out.get(path), tuple):
                out[path] = max(int(out.get(path, 0)), p.stop or 1)
        if self.spec.language:
            out[f"steps/{self.spec.language}"] = "text"
        for path in self.spec.sample_range or ():
            out[f"episode_metadata/{path}"] = ()
        return out

    def _concat(
        self, steps: Mapping[str, Any], parts: Sequence[Part], lo: int, t: int, what: str
    ) -> np.ndarray:
        blocks = []
        for p in parts:
            if p.zeros:
                blocks.append(np.zeros((t, p.zeros), np.float32))
                continue
            x = np.asarray(_at(steps, p.key, what), np.float32)
            if x.ndim == 1:  # a scalar per step
                x = x[:, None]
            if x.ndim != 2 or (p.dims is not None and x.shape[1] != p.dims):
                raise schema.SchemaError(
                    f"{what}: feature {p.key!r} has shape {x.shape[1:]} per step, expected "
                    f"{(p.dims,) if p.dims is not None else 'a vector'}"
                )
            stop = x.shape[1] if p.stop is None else p.stop
            if stop > x.shape[1]:
                raise schema.SchemaError(
                    f"{what}: feature {p.key!r} has {x.shape[1]} dims, slice needs {stop}"
                )
            x = x[lo:, p.start : stop]
            if p.op == "next_minus_current":
                blocks.append(x[1 : 1 + t] - x[:t])
            else:
                blocks.append(OPS[p.op](x)[:t])
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def standardize(
        self,
        raw: Mapping[str, Any],
        dataset_name: str,
        episode_id: int,
        cameras: Mapping[str, str | None] | None = None,
    ) -> schema.StdEpisode:
        """Decoded episode (steps stacked [T, ...]) -> StdEpisode (the configured dims)."""
        spec = self.spec
        steps = raw["steps"]
        what = f"{dataset_name} episode {episode_id}"
        first = next(p.key for p in (*spec.state, *spec.action) if p.key)
        total = len(np.asarray(_at(steps, first, what)))
        relabel = any(p.op == "next_minus_current" for p in (*spec.state, *spec.action))
        lo = spec.skip_first_steps
        t = total - lo - int(relabel)
        if t < 1:
            needed = lo + int(relabel) + 1
            raise schema.SchemaError(
                f"{what} has {total} steps; the {spec.name!r} config needs >= {needed} "
                f"(skip_first_steps {lo}{', next_minus_current drops the last' if relabel else ''})"
            )
        state = self._concat(steps, spec.state, lo, t, what)
        action = self._concat(steps, spec.action, lo, t, what)
        cameras = dict(cameras or spec.cameras)
        meta = raw.get("episode_metadata", {})
        for name, key in list(cameras.items()):
            flag_path = spec.camera_present.get(key) if key else None
            if flag_path is None:
                continue
            try:
                flag = _at(meta, flag_path, what)
            except schema.SchemaError:
                continue  # episodes without the flag recorded the camera
            if not bool(np.asarray(flag)):
                cameras[name] = None
        images = {
            k: v[lo : lo + t]
            for k, v in schema.select_cameras(steps["observation"], cameras).items()
        }
        language = schema.as_text(_at(steps, spec.language, what)[0]) if spec.language else ""
        sample_range = (0, t)
        if spec.sample_range is not None:
            start, end = (int(np.asarray(_at(meta, p, what))) for p in spec.sample_range)
            sample_range = (start, end)
        return schema.StdEpisode(
            dataset_name=dataset_name,
            episode_id=episode_id,
            images=images,
            state=state,
            action=action,
            language=language,
            sample_range=sample_range,
        )
