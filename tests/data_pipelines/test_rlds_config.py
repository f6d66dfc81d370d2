"""The named RLDS datasets as configurations: identical samples to the recorded module code."""

from __future__ import annotations

import json
import os

from rlds_digests import GOLDEN, all_digests


def test_named_sources_give_the_recorded_samples(
    libero_dir, bridge_dir, fractal_dir, agibot_dir, tokenizer_path, tmp_path
):
    dirs = {
        "libero": libero_dir,
        "bridge": bridge_dir,
        "fractal": fractal_dir,
        "agibot": agibot_dir["path"],
    }
    now = all_digests(dirs, tokenizer_path, str(tmp_path))
    if os.environ.get("F1_RECORD_RLDS_GOLDEN"):
        with open(GOLDEN, "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert now["episodes"] == golden["episodes"]
    assert now["mixture"] == golden["mixture"]
