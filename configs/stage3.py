"""Stage 3, post-training on one robot: shared by the stage3_<target> recipes."""

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
    c.init.params_path = "checkpoints/f1_pretrain"  # e.g. the released F1, imported
    return c
