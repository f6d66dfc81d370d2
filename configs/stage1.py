"""Stage 1, generation alignment: only the generation expert and its foresight heads train, on
all 10 scales with teacher forcing (mask-embedding mixture), starting from pi0 + the VAR VQ-VAE
(`python -m conversion compose-stage1`)."""

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
    c.init.params_path = "checkpoints/stage1_init"
    return c
