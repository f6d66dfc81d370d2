"""One of two local processes of a real multi-process run (jax.distributed on CPU), for
test_two_process_preemption.py: `python two_process_worker.py RANK PORT WORKDIR STEPS PREEMPT`.

PREEMPT > 0: this process sends itself SIGTERM while its PREEMPT-th batch is being read, as a
TPU host being preempted would be."""

import json
import os
import signal
import sys

import jax

rank, port, workdir, steps, preempt = (
    sys.argv[1],
    sys.argv[2],
    sys.argv[3],
    sys.argv[4],
    sys.argv[5],
)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(rank))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_fixtures import tiny_config  # noqa: E402  (after jax.distributed.initialize)

from f1_jax.training import trainer  # noqa: E402

config = tiny_config(json.loads(os.environ["F1_TEST_DATA"]), steps=int(steps), mesh=(2, 1, 1))
config.train.checkpoint_every = 100  # only preemption and the last step save
# Starting weights written by the test: each process compiles only the step, not the random
# initialisation (the persistent compilation cache serves process 0 only).
config.init.params_path = os.environ["F1_TEST_INIT"]

if int(preempt):
    original = trainer._global_batches

    def preempted(iterator, mesh):
        for index, batch in enumerate(original(iterator, mesh)):
            if index == int(preempt) - 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    trainer._global_batches = preempted
trainer.train(config, workdir)
print("EXIT OK", flush=True)
