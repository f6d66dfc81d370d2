"""Stage 2, joint pretraining of all experts on the four-dataset mixture: 4 foresight scales
sampled as the original does, loss = action MSE + 0.1 * foresight CE, action chunk 30.

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

On TPU pods (per-chip memory as compiled by `python -m f1_jax.aot`; BENCHMARKS.md has the table):
v5p-128 takes the recipe as it is (45 examples per chip: 26.9 GiB of 95). 256 chips need a batch
that 256 divides, and data 16 x fsdp 16 keeps every parameter sharded (v5e-256: 10.4 GiB of 16;
with `--config.model.remat_policy=save_qkv`, which recomputes 8 % less, 14.4 GiB):

    --config.data.batch_size=2816 --config.mesh.shape="(16,16,1)"
    --config.mesh.num_slices=2 --config.mesh.shape="(32,16,1)" --config.data.batch_size=3072
        # two v5e-256 slices
"""

from configs.base import base_config, stage2_mixture


def get_config():
    c = base_config()
    c.model.num_scales = 4
    c.model.chunk_size = 30
    c.data.datasets = stage2_mixture()
    c.data.balance_weights = True
    c.data.batch_size = 2880
    c.optimizer.schedule = "constant"
    c.optimizer.lr = {"vision": 5e-5, "und": 5e-5, "gen": 5e-5, "act": 5e-5}
    c.train.steps = 100_000
    c.init.required = True  # --config.init.params_path: see the chain in the docstring
    return c
