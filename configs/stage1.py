"""Stage 1, generation alignment: only the generation expert and its foresight heads train, on
all 10 scales with teacher forcing (mask-embedding mixture), starting from pi0 + the VAR VQ-VAE
(`python -m conversion compose-stage1`).

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
only the generation expert trains, so its optimizer state is small. v5p-128 takes the recipe as
it is (20 examples per chip). On 256 chips data 16 x fsdp 16 keeps every parameter sharded
(v5e-256: 5 per chip, 4.6 GiB of 16):

    --config.mesh.shape="(16,16,1)"
    --config.mesh.num_slices=2 --config.mesh.shape="(32,16,1)" --config.data.batch_size=1536
        # two v5e-256 slices (1280 does not split over 512 chips)
"""

from configs.base import base_config, stage2_mixture


def get_config():
    c = base_config()
    c.model.num_scales = 10
    c.model.foresight_training = "teacher_forcing"
    c.model.action_loss_weight = 0.0
    c.model.foresight_loss_weight = 1.0
    c.data.datasets = stage2_mixture()
    c.data.balance_weights = True
    c.data.batch_size = 1280
    c.optimizer.schedule = "cosine"
    c.optimizer.lr = {"vision": 0.0, "und": 0.0, "gen": 3e-4, "act": 0.0}
    c.optimizer.frozen = ("vision", "und", "act", "vqvae")
    c.train.steps = 512_000
    c.init.required = True  # --config.init.params_path: see the chain in the docstring
    return c
