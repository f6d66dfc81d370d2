"""Stage 3, post-training on one robot: shared by the stage3_<target> recipes.

The three-stage chain, each stage starting from the previous one's workdir (its latest step;
`WORKDIR:STEP` picks a step, `--config.init.use_ema=true` its EMA weights):

    python -m conversion compose-stage1 --pi0 PI0_DIR --vae vae_ch160v4096z32.pth --output ckpt/stage1_init
    python -m f1_jax.launch --config=stage1 --workdir=gs://BUCKET/f1/stage1 \
        --config.init.params_path=ckpt/stage1_init
    python -m f1_jax.launch --config=stage2 --workdir=gs://BUCKET/f1/stage2 \
        --config.init.params_path=gs://BUCKET/f1/stage1
    python -m f1_jax.launch --config=stage3_libero --workdir=gs://BUCKET/f1/libero \
        --config.init.params_path=gs://BUCKET/f1/stage2
    python -m conversion export --run gs://BUCKET/f1/libero --output f1_libero/

Stage 3 may also start from the released F1, imported: `python -m conversion import f1 --input
F1_DIR --output ckpt/f1` then `--config.init.params_path=ckpt/f1`.

The batch of 128 needs far less than a pod (per-chip memory as compiled by `python -m f1_jax.aot`,
BENCHMARKS.md): v5p-128 as it is, 2 examples per chip, 4.4 GiB of 95; a 256-chip slice takes
`--config.data.batch_size=256 --config.mesh.shape="(16,16,1)"` (5.3 GiB of a v5e's 16). For a
small slice or one GPU see configs/finetune.py's memory plan.
"""

from configs.base import base_config, dataset


def stage3_config(name: str, source: str, chunk_size: int, version: str = "1.0.0"):
    c = base_config()
    c.model.num_scales = 4
    c.model.chunk_size = chunk_size
    c.data.datasets = [dataset(name, source, version=version)]
    c.data.batch_size = 128
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 2_000
    c.optimizer.lr = {"vision": 2.5e-5, "und": 5e-5, "gen": 5e-5, "act": 5e-5}
    c.train.steps = 100_000
    c.train.checkpoint_every = 10_000
    c.init.required = True  # --config.init.params_path: see the chain in the docstring
    return c
