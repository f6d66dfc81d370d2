"""Stage 3 on Bridge-v2 (WidowX). The original publishes no Bridge recipe; chunk 4 follows its
LIBERO recipe and the SimplerEnv WidowX evaluations that execute short chunks."""

from configs.stage3 import stage3_config


def get_config():
    return stage3_config("bridge_orig", "bridge", chunk_size=4)
