"""Fields shared by every recipe. Each recipe file calls `base_config()` and changes what differs.

Dataset paths come from the environment variable F1_DATA_DIR (default /data/rlds): every dataset
lives at $F1_DATA_DIR/<name>/<version>, as `tfds build` or `gsutil cp` leave it.
"""

import os

import ml_collections

from f1_jax.training.sharding import DEFAULT_RULES


def data_dir() -> str:
    return os.environ.get("F1_DATA_DIR", "/data/rlds")


def dataset(
    name: str,
    source: str,
    version: str = "1.0.0",
    weight: float = 1.0,
    directory: str | None = None,
) -> dict:
    return {
        "name": name,
        "source": source,
        "weight": weight,
        "path": os.path.join(directory or data_dir(), name, version),
    }


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {
            "size": "full",  # f1_jax/models/sizes.py: full, small, tiny, debug
            "precision": "default",  # default (bf16 matmuls) or parity (fp32)
            "remat_policy": "full",  # f1_jax/models/remat.py names them (none, full, save_qkv, ...)
            "num_scales": 4,  # foresight scales predicted (10 at stage 1)
            "chunk_size": 30,
            "foresight_training": "sampled",  # sampled (original stage 2/3) or teacher_forcing
            # sampled: the prefix once, its KV cache reused for sampling and the loss (the same
            # loss and gradients as the original's two passes, one prefix forward less)
            "reuse_prefix": True,
            "unroll_layers": False,  # benchmarks only: XLA counts a loop body's FLOPs once
            # the joint attention: xla, or splash (TPU splash attention kernel; docs/model.md)
            "attention": "xla",
            # the frozen VQ-VAE encodes the frames one time step at a time: T-fold smaller
            # activations, the same codes (docs/model.md)
            "encode_frames_by_step": True,
            "action_loss_weight": 1.0,
            "foresight_loss_weight": 0.1,
        }
    )
    c.data = ml_collections.ConfigDict(
        {
            "datasets": [],
            "tokenizer_path": os.path.join(data_dir(), "paligemma_tokenizer.model"),
            "batch_size": 32,
            # The model's camera slots: a slot no dataset of the mixture fills only costs compute
            # (its tokens are masked), so recipes list the cameras their data has.
            "cameras": ("primary", "secondary", "wrist"),
            # Ship generation frames as the frozen VQ-VAE's codes, encoded once per dataset
            # (no VQ-VAE in the train step; centred crops only, no crop augmentation).
            "frame_codes": False,
            "history_offsets": (-9, -6, -3, 0),
            "target_offsets": (3,),
            "norm_mode": "mean_std",
            "balance_weights": False,
            "num_workers": 8,
            "stats_dir": "",
            # docs/data.md "Data integrity": episodes with an empty instruction are kept (True:
            # left out, as OpenVLA); gripper actions in each dataset's own convention ("native",
            # as the original) or "open_is_positive"; the share of bad records that stops a run.
            "drop_unlabeled": False,
            "gripper_convention": "native",
            "max_bad_fraction": 0.01,
        }
    )
    c.eval_data = ml_collections.ConfigDict({"datasets": []})  # held-out episodes; empty: no eval
    # (data, fsdp, tensor) sizes, one may be -1; num_devices 0 uses every device. On a TPU torus
    # each axis is a product of whole physical axes unless allow_split_physical_axes.
    # `python -m f1_jax.aot` checks a mesh against a TPU topology before the pod is rented.
    c.mesh = ml_collections.ConfigDict(
        {"shape": (1, -1, 1), "num_slices": 1, "num_devices": 0, "allow_split_physical_axes": False}
    )
    c.sharding_rules = [list(rule) for rule in DEFAULT_RULES]
    c.optimizer = ml_collections.ConfigDict(
        {
            "schedule": "constant",
            "warmup_steps": 0,
            "lr": {"vision": 5e-5, "und": 5e-5, "gen": 5e-5, "act": 5e-5},
            "b1": 0.9,
            "b2": 0.95,
            "eps": 1e-8,
            "weight_decay": 1e-10,
            "clip_norm": 1.0,
            "ema_decay": 0.0,  # 0: no EMA
            "grad_accum_steps": 1,
            # Adam's first moment in "bfloat16" halves its memory (6.6 GiB at full size); the
            # loss curves of both are compared in BENCHMARKS.md.
            "mu_dtype": "float32",
            "frozen": ("vqvae",),  # groups: vision, und, gen, act, vqvae (always frozen)
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "steps": 100_000,
            "seed": 42,
            "log_every": 50,
            "check_every_step": False,  # NaN guard on every step (a device sync per step)
            "eval_every": 5_000,
            "eval_batches": 8,
            "checkpoint_every": 1_000,
            "keep_checkpoints": 3,
            "keep_period": 10_000,  # also keep every multiple of this step (0: none)
            "async_checkpoints": True,
            # Orbax's OCDBT array store; false: one zarr array per parameter, for storage that
            # lacks conditional writes (some S3-compatible stores, GCS emulators).
            "checkpoint_ocdbt": True,
        }
    )
    # Starting weights: an earlier run's workdir (`WORKDIR` = its latest step, `WORKDIR:STEP`;
    # its EMA weights with use_ema) or a `python -m conversion import` output; what the source
    # lacks is initialised fresh. Optionally a VQ-VAE of its own ({'params': ...} of
    # f1_jax.models.vqvae.VQVAE, e.g. trained by the debug recipe).
    # required: the recipe makes no sense from random weights (stages 1-3); training stops early
    # when params_path is empty.
    c.init = ml_collections.ConfigDict(
        {"params_path": "", "use_ema": False, "vqvae_path": "", "required": False}
    )
    # A module with before_training(config, workdir) / after_training(config, workdir, metrics),
    # run by the launcher around training (the debug recipe's "builtin_task.hooks").
    c.hooks = ""
    return c


def stage2_mixture(directory: str | None = None) -> list[dict]:
    """F1's pretraining mixture: Agibot-World, OXE Bridge-v2, OXE Fractal and LIBERO."""
    return [
        dataset("agibot_world", "agibot", weight=1.0, directory=directory),
        dataset("bridge_orig", "bridge", weight=1.0, directory=directory),
        dataset(
            "fractal20220817_data", "fractal", version="0.1.0", weight=1.0, directory=directory
        ),
        dataset("libero_10_no_noops", "libero", weight=1.0, directory=directory),
    ]
