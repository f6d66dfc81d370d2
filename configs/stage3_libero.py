"""Stage 3 on LIBERO (the official recipe f1_vla/config/debug_test.yaml: chunk 4, batch 128 as 8 x 16)."""

from configs.stage3 import stage3_config


def get_config():
    return stage3_config("libero_spatial_no_noops", "libero", chunk_size=4)
