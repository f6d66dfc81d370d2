"""Conversion time and peak memory at >= 1 B parameters: one JSON line per measurement.

A synthetic official-layout F1 checkpoint (random values, official key names and dtypes, expert
lm_heads included) is written tensor by tensor, then imported (`python -m conversion import f1`)
and exported back. Each phase runs in its own process so its peak RSS (`ru_maxrss`) is its own.

  python benchmarks/bench_conversion.py [--workdir DIR] [--keep]
"""

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402

from f1_common.model_config import ExpertConfig, SiglipConfig, level_ids  # noqa: E402
from f1_jax.models.sizes import get_model_config  # noqa: E402


def bench_config():
    """Full widths (2048 / 1024, 8 heads x 256, MLP 16384 / 4096), 8 layers, a 4-layer full-width
    SigLIP, a 16384-token vocabulary and the full VQ-VAE: about 1.4 B parameters."""
    full = get_model_config("full")
    shared = dict(depth=8, num_heads=8, num_kv_heads=1, head_dim=256)
    return dataclasses.replace(
        full,
        siglip=dataclasses.replace(SiglipConfig(), depth=4),
        und=ExpertConfig("und", 2048, 16384, **shared),
        gen=ExpertConfig("gen", 1024, 4096, **shared),
        act=ExpertConfig("act", 1024, 4096, **shared),
        vocab_size=16_384,
    )


def _peak_rss_gib() -> float:
    """ru_maxrss: includes file-backed pages (the memory-mapped safetensors and scratch files)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class AnonPeak:
    """Samples RssAnon (/proc/self/status) every 20 ms: the memory that cannot be paged out."""

    def __init__(self):
        self.peak_kib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            self._stop.wait(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 2**20


def phase_write(workdir: Path) -> dict:
    """The synthetic official checkpoint, written with the streaming writer."""
    from conversion import config_io, engine, tables  # deferred: per-phase process, own RSS
    from conversion.io import NP_DTYPES, write_safetensors_streaming  # deferred: as above

    config = bench_config()
    abstract = engine.abstract_params(config)
    rows = tables.f1_table(
        config, [k.removeprefix("vqvae/") for k in abstract if k.startswith("vqvae/")]
    )
    plan = engine.plan_export(
        rows,
        {k: v.shape for k, v in abstract.items()},
        tables.f1_extras(config),
        with_optional=True,
    )
    rng = np.random.default_rng(0)
    levels = level_ids(config.foresight.patch_nums)[None].astype(np.int64)

    def tensors():
        for item in plan:
            if item.key == "model.lvl_1L":  # a buffer with fixed content
                yield item.key, levels
                continue
            x = rng.standard_normal(item.shape, dtype=np.float32) * 0.02
            yield item.key, x.astype(NP_DTYPES[item.dtype])

    src = workdir / "official"
    src.mkdir()
    start = time.perf_counter()
    write_safetensors_streaming(
        src / "model.safetensors", [(i.key, i.shape, i.dtype) for i in plan], tensors()
    )
    with open(src / "config.json", "w") as f:
        json.dump(config_io.to_official(config), f)
    params = sum(int(np.prod(v.shape)) for v in abstract.values())
    return {
        "phase": "write_synthetic",
        "seconds": time.perf_counter() - start,
        "tensors": len(plan),
        "params": params,
        "file_gib": (src / "model.safetensors").stat().st_size / 2**30,
    }


def phase_import(workdir: Path) -> dict:
    from conversion import importers  # deferred: per-phase process, own peak RSS

    start = time.perf_counter()
    importers.import_f1(workdir / "official", workdir / "ours", progress=False)
    return {"phase": "import_f1", "seconds": time.perf_counter() - start}


def phase_export(workdir: Path) -> dict:
    from conversion import exporter  # deferred: per-phase process, own peak RSS

    start = time.perf_counter()
    exporter.export_f1(
        workdir / "ours", workdir / "exported", True, progress=False, dtype="released"
    )
    return {"phase": "export_f1", "seconds": time.perf_counter() - start}


PHASES = {"write": phase_write, "import": phase_import, "export": phase_export}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", help="where the checkpoints go (default: a temp dir)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    args = parser.parse_args()
    if args.phase:  # child process: one phase, one JSON line with its own peak RSS
        anon = AnonPeak()
        result = PHASES[args.phase](Path(args.workdir))
        result["peak_anon_rss_gib"] = anon.stop()
        result["peak_rss_gib"] = _peak_rss_gib()
        print(json.dumps(result), flush=True)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_conversion_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for phase in ("write", "import", "export"):
            subprocess.run(
                [sys.executable, __file__, "--phase", phase, "--workdir", str(workdir)],
                check=True,
                env=dict(os.environ, JAX_PLATFORMS="cpu"),
            )
        identical = _compare(workdir)
        print(json.dumps({"phase": "roundtrip_check", **identical}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _compare(workdir: Path) -> dict:
    """Byte comparison of every tensor but the expert lm_heads (exported as zeros)."""
    differ, total = [], 0
    with (
        safe_open(str(workdir / "official" / "model.safetensors"), "numpy") as a,
        safe_open(str(workdir / "exported" / "model.safetensors"), "numpy") as b,
    ):
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            total += 1
            if "lm_head" in key and "gemma_" in key:
                continue
            x, y = a.get_tensor(key), b.get_tensor(key)
            if x.dtype != y.dtype or x.tobytes() != y.tobytes():
                differ.append(key)
    return {"tensors": total, "bit_exact_except_expert_lm_heads": not differ, "differ": differ[:5]}


if __name__ == "__main__":
    main()
