"""One of two local processes (jax.distributed on CPU) encoding a dataset's frame codes, for
test_frame_codes_two_process.py: `python frame_codes_worker.py RANK PORT STATS_DIR`. Prints
`STORE <path>` and `ENCODED <records this process encoded, as JSON>`."""

import json
import os
import sys

import jax

rank, port, stats_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_fixtures import frame_codes_setup  # noqa: E402  (after jax.distributed.initialize)

from f1_jax.training import frame_codes  # noqa: E402

data, model, vqvae = frame_codes_setup(json.loads(os.environ["F1_TEST_DATA"]), stats_dir)
encoded = []
original = frame_codes.encode_dataset


def recording(*args, **kwargs):
    for record, codes in original(*args, **kwargs):
        encoded.append(int(record))
        yield record, codes


frame_codes.encode_dataset = recording
data = frame_codes.ensure_frame_codes(data, model, vqvae, progress=False)
print("STORE", data.frame_code_stores[0], flush=True)
print("ENCODED", json.dumps(encoded), flush=True)
