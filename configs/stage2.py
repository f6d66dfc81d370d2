"""Stage 2, joint pretraining of all experts on the four-dataset mixture: 4 foresight scales
sampled as the original does, loss = action MSE + 0.1 * foresight CE, action chunk 30."""

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
    c.init.params_path = "checkpoints/stage1_final"
    return c
