"""The embedded default: a tiny F1 on the built-in simulated task, on a laptop CPU in minutes.

`python -m f1_jax.launch --config=debug --workdir=DIR` generates the expert episodes, the
tokenizer, the debug VQ-VAE and the grounding-pretrained prefix if missing, trains, evaluates on
held-out episodes, then runs closed-loop evaluation in the simulator (success rate per task
against no-op and random baselines). All of that lives in the `builtin_task` package.
"""

import ml_collections

from configs.base import base_config


def get_config():
    c = base_config()
    c.model.size = "debug"
    c.model.precision = "parity"  # fp32: CPUs have no fast bf16 matmuls
    c.model.remat_policy = "none"
    c.model.chunk_size = 4
    c.data.batch_size = 16
    c.data.num_workers = 0
    c.data.max_token_len = 16
    # The built-in task has no secondary camera: no slot for it (a third of SigLIP's work and
    # 49 masked tokens of every sequence saved).
    c.data.cameras = ("primary", "wrist")
    # The frozen VQ-VAE encodes every frame once, before training, not in every step (and the
    # closed-loop policy crops its frames centred, as these codes are).
    c.data.frame_codes = True
    c.data.stats_dir = ""
    c.mesh.shape = (-1, 1, 1)
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 50
    c.optimizer.lr = {"vision": 1e-3, "und": 1e-3, "gen": 1e-3, "act": 1e-3}
    c.train.steps = 1_000
    c.train.log_every = 25
    c.train.check_every_step = True
    c.train.eval_every = 500
    c.train.eval_batches = 2
    c.train.checkpoint_every = 250
    c.train.keep_period = 0
    # The built-in task prepares its data and pretrained parts before training and evaluates in
    # its simulator after (builtin_task/hooks.py); its settings are the `sim` section.
    c.hooks = "builtin_task.hooks"
    c.sim = ml_collections.ConfigDict()
    c.sim.data_dir = ""  # default: WORKDIR/data
    c.sim.train_episodes = 1000
    c.sim.eval_episodes = 30
    c.sim.image_size = 64
    c.sim.seed = 0
    c.sim.vocab_size = 96
    # The debug VQ-VAE has no released weights: train it on expert frames first (0: keep random).
    c.sim.vqvae_steps = 900
    c.sim.vqvae_batch_size = 8
    c.sim.vqvae_lr = 5e-3
    c.sim.vqvae_episodes = 100
    # Nor has it PaliGemma's pretraining: teach SigLIP + the understanding expert to mark the
    # patches of the named block and square first (0: start F1 from random weights).
    c.sim.grounding_steps = 400
    c.sim.grounding_batch_size = 32
    c.sim.grounding_lr = 1e-3
    c.sim.grounding_episodes = 300
    c.sim.evaluate_episodes = 60  # closed-loop episodes after training (0: skip)
    return c
