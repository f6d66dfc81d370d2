"""launch/*.sh pass every override through to the launcher unchanged, quotes and all."""

import os
import stat
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stub(path, body: str) -> None:
    with open(path, "w") as f:
        f.write("#!/usr/bin/env bash\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def _fake_machine(tmp_path):
    """A `gcloud` that runs the --command in a fresh bash (as each TPU worker's shell would)
    and a `python` that records the arguments it was given, one per line."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    (home / "f1-jax").mkdir(parents=True)
    _stub(
        bin_dir / "gcloud",
        'while [ $# -gt 0 ]; do if [ "$1" = --command ]; then exec bash -c "$2"; fi; shift; done\n',
    )
    _stub(
        bin_dir / "python",
        'printf "%s\\n" "$@" > "$ARGS_FILE"; echo "$F1_DATA_DIR" >> "$ARGS_FILE"\n',
    )
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        HOME=str(home),
        ARGS_FILE=str(tmp_path / "args"),
    )
    env.pop("F1_DATA_DIR", None)
    return env


def test_tpu_pod_script_keeps_overrides_intact(tmp_path):
    env = _fake_machine(tmp_path)
    overrides = [
        "--config.mesh.shape=(2,-1,2)",
        "--config.train.steps=10",
        "--config.data.tokenizer_path=/data/my tokenizer.model",
        "--dry_run",
    ]
    subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "tpu_vm_pod.sh"), "tpu", "zone", "stage2", "gs://b/r"]
        + overrides,
        env=env,
        check=True,
        timeout=60,
    )
    lines = (tmp_path / "args").read_text().splitlines()
    assert lines == [
        "-m",
        "f1_jax.launch",
        "--config=stage2",
        "--workdir=gs://b/r",
        *overrides,
        "/data/rlds",
    ]


def test_single_machine_and_multislice_scripts_pass_arguments_through(tmp_path):
    env = _fake_machine(tmp_path)
    subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "multislice.sh"), "2", "stage2", "/w", "--dry_run"],
        env=env,
        check=True,
        timeout=60,
    )
    lines = (tmp_path / "args").read_text().splitlines()
    assert lines[:4] == ["-m", "f1_jax.launch", "--config=stage2", "--workdir=/w"]
    assert "--config.mesh.shape=(2,-1,1)" in lines and "--dry_run" in lines
