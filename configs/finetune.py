"""Fine-tune F1 on one's own dataset, on one GPU.

    # the released F1, imported once (its <dataset>_stats.json become norm_stats.json)
    python -m conversion import f1 --input F1-VLA/ --output ckpt/f1 --tokenizer paligemma/tokenizer.model
    # statistics of the new dataset (cached; also checks its layout against the configuration)
    python -m data_pipelines.convert stats --source rlds --path /data/my_robot/1.0.0 \
        --rlds_config my_robot.json --name my_robot
    python -m f1_jax.launch --config=finetune --workdir=runs/my_robot \
        --config.init.params_path=ckpt/f1 \
        --config.data.path=/data/my_robot/1.0.0 --config.data.rlds=my_robot.json \
        --config.data.tokenizer_path=paligemma/tokenizer.model [--dry_run]
    python -m conversion export --run runs/my_robot --output f1_my_robot/

The dataset: `data.path` (its TFDS version directory, or a LeRobot dataset's root), `data.source`
("rlds", with the configuration `data.rlds`: a JSON file, docs/data.md "Any RLDS dataset";
"lerobot", with the feature mapping `data.lerobot`: a JSON file or text, README "Bring your own
robot"; or a named source: libero, bridge, fractal, agibot, with both empty), `data.name` (the
name its statistics and the export's norm_stats.json carry). `init.params_path` is the released
F1's import or a stage-2 (or stage-3) run's workdir, required.

What trains: everything but the frozen VQ-VAE, as the official stage 3 does (its LIBERO recipe
freezes nothing; SigLIP at half the learning rate), with chunk 4. The memory plan for one 80 GB
GPU (docs/architecture.md "Fine-tuning on one GPU or a small TPU slice", from
benchmarks/bench_aot_memory.py at full size) sets `data.batch_size` 16 and Adam's first moment in bf16: 66.8 GiB at the peak (run with
XLA_PYTHON_CLIENT_MEM_FRACTION=0.95: JAX takes 75 % of the GPU by default).
`--config.optimizer.frozen="('vqvae','vision','und')"` trains only the generation and action
experts (51.9 GiB at batch 32). On a TPU slice: `python -m f1_jax.aot --config=finetune
--topology=v5litepod-8` (libtpu on any CPU machine) gives 7.9 GiB per chip of 16 at batch 16,
12.4 GiB at batch 64 (docs/architecture.md "Fine-tuning on one GPU or a small TPU slice").
"""

import ml_collections

from configs.base import base_config


def get_config():
    c = base_config()
    c.model.num_scales = 4
    c.model.chunk_size = 4
    # One dataset, given by these fields; data.datasets refers to them, so a command-line
    # override reaches the dataset (and the run's record, the export, the policy see it).
    c.data.name = "my_robot"
    c.data.source = "rlds"
    c.data.path = ""
    c.data.rlds = ""  # a JSON file (or JSON text) with the RLDS configuration
    # source "lerobot": a JSON file (or JSON text) naming the cameras, state, action and gripper
    # (sources/lerobot.py LeRobotOptions, plus "cameras"); empty: none (the source's defaults)
    c.data.lerobot = ""
    c.data.datasets = [
        ml_collections.ConfigDict(
            {
                "name": c.data.get_ref("name"),
                "source": c.data.get_ref("source"),
                "path": c.data.get_ref("path"),
                "rlds": c.data.get_ref("rlds"),
                "lerobot": c.data.get_ref("lerobot"),
                "weight": 1.0,
            }
        )
    ]
    c.data.batch_size = 16  # the memory plan: 66.8 GiB peak on one device
    c.data.num_workers = 8
    c.mesh.shape = (1, -1, 1)
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 1_000
    c.optimizer.lr = {"vision": 2.5e-5, "und": 5e-5, "gen": 5e-5, "act": 5e-5}
    c.optimizer.mu_dtype = "bfloat16"  # Adam's first moment: 6.6 GiB less (memory plan)
    c.optimizer.frozen = ("vqvae",)
    c.train.steps = 30_000
    c.train.checkpoint_every = 5_000
    c.train.keep_period = 0
    c.train.eval_every = 0
    c.init.required = True  # the released F1's import or a stage-2 run
    return c
