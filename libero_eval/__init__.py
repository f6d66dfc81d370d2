"""Closed-loop evaluation in the LIBERO simulator under the community protocol (docs/libero.md).

    python -m libero_eval --checkpoint DIR --suite libero_spatial [--tasks 0,3] [--episodes 50]

Modules: `conventions` (the protocol and the training sets' observation conventions, NumPy only),
`simulator` (prompt-free, download-free LIBERO set-up; the asset manifest check), `policies`
(f1-jax runtimes and openpi-protocol servers behind one interface), `evaluate` (episodes,
workers, videos), `results` (results.json, Wilson intervals, resuming).
"""
