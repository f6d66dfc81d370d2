"""Tolerances for fp32 parity tests, derived from the numerics instead of fixed atol/rtol.

A plain module (imported as ``from tolerances import assert_close``; tests/ is on sys.path).

The rule
--------
Two fp32 implementations of the same value (ours vs torch / transformers / a float64 reference)
differ by the rounding errors of the sums they compute in different orders. A sum of ``n``
products rounds after every addition: its error is ``sum_k delta_k * s_k`` with ``|delta_k| <=
u = eps32 / 2`` and ``s_k`` the partial sums, all of magnitude ``<= scale``. The worst case is
``n * u * scale``, but the deltas are independent and of random sign, so the error grows like
``sqrt(n)`` (Higham & Mary, "A new approach to probabilistic rounding error analysis", 2019);
blocked and pairwise summation (XLA, BLAS, torch) grow even slower. We therefore assert

    |got - want| <= C * eps32 * sqrt(terms) * scale,    eps32 = 2**-23 ~ 1.19e-7,  C = 2,

elementwise (``scale`` may be an array), where

* ``terms`` is the number of rounded accumulations behind one compared value: the reduction
  length (kernel size x input channels for a conv, fan-in for a Linear, head_dim for q.k, the
  number of keys for softmax and p.v, the group size for a norm's mean and variance), plus 1
  per bias / elementwise op that rounds. For a stack of layers pass the per-stage lengths (a
  sequence): they are summed, i.e. the independent rounding errors of the stages add in
  quadrature, assuming the stages neither amplify nor damp a relative error (true enough of the
  normalised residual blocks compared here: every measured error stays below ~0.3 of its bound).
* ``scale`` is the magnitude of the partial sums: by default ``max |want|``; pass the summands'
  magnitude instead where the compared value cancels (a mean of random-sign data, a difference
  of two near-equal results), e.g. ``max |x|`` for a resize whose weights sum to 1, or the
  per-element ``sum |products|`` when it is cheap to compute.
* ``C = 2``: per side the error has a standard deviation of at most ``u * sqrt(n) * scale /
  sqrt(3)`` (a rounding error is ~uniform on ``[-u, u]``), so the difference of two sides has
  ``sigma <= eps32 * sqrt(n) * scale / sqrt(6) ~ 0.41 eps32 sqrt(n) scale`` and C = 2 sits
  ~5 sigma out, with ``scale`` an upper bound of the partial sums on top. When ``want`` is a
  float64 reference only ``got`` rounds (sigma smaller by sqrt(2); the same bound is kept).

A bug (a wrong weight, a missing bias, a transposed kernel, a wrong resize window) moves values by
a sizeable fraction of ``scale``, orders of magnitude above these bounds (~1e-6 to 1e-5 of it),
so following the numerics costs the tests no power; they only stop failing when a new CPU sums
in another order.

On failure the message prints the measured max error, the bound there and their ratio. Set
``F1_JAX_TOLERANCE_LOG=/some/file`` to append every comparison's (test, error, bound, ratio) as
a JSON line, to see how much headroom each tolerance has on a machine.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23: the spacing of fp32 numbers in [1, 2)
C = 2.0  # ~5 standard deviations of the rounding-error difference (see the module docstring)


def total_terms(terms: int | Iterable[int]) -> int:
    """A reduction length, or the per-stage lengths of a stack summed (errors add in quadrature)."""
    n = int(terms) if isinstance(terms, (int, np.integer)) else int(sum(int(t) for t in terms))
    if n < 1:
        raise ValueError(f"terms must be >= 1, got {terms}")
    return n


def relative_bound(terms: int | Iterable[int], c: float = C) -> float:
    """The bound as a fraction of `scale`: c * eps32 * sqrt(terms)."""
    return c * EPS32 * math.sqrt(total_terms(terms))


def bound(terms: int | Iterable[int], scale, c: float = C):
    """c * eps32 * sqrt(terms) * scale (scalar or per element)."""
    return relative_bound(terms, c) * np.asarray(scale, np.float64)


def _log(record: dict) -> None:
    """Appends `record` (+ the running test's id) to $F1_JAX_TOLERANCE_LOG, if set."""
    path = os.environ.get("F1_JAX_TOLERANCE_LOG")
    if path:
        record["test"] = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def assert_close(got, want, *, terms, scale=None, c: float = C, err_msg: str = "") -> float:
    """Asserts |got - want| <= c * eps32 * sqrt(terms) * scale elementwise; returns the ratio.

    Args:
      got: our result (any float dtype; compared in float64).
      want: the reference, same shape as `got` (or broadcastable to it).
      terms: the reduction length behind one value, or per-stage lengths of a stack (summed).
      scale: magnitude of the partial sums, scalar or broadcastable to `got`; default max |want|.
      c: the safety factor (default C = 2; the module docstring says why).
      err_msg: prefix of the failure message.
    Returns:
      max(|got - want| / bound): the fraction of the tolerance used.
    """
    got = np.asarray(got, np.float64)
    want = np.broadcast_to(np.asarray(want, np.float64), got.shape)
    if scale is None:
        scale = np.abs(want).max(initial=0.0)
    tol = np.broadcast_to(bound(terms, scale, c), got.shape)
    # Non-finite values must sit at the same places with the same values (as assert_allclose).
    finite = np.isfinite(got) & np.isfinite(want)
    same_nonfinite = np.array_equal(
        np.where(finite, 0.0, got), np.where(finite, 0.0, want), equal_nan=True
    )
    err = np.where(finite, np.abs(got - want), 0.0)
    ratios = err / np.maximum(tol, np.finfo(np.float64).tiny)
    worst = np.unravel_index(np.argmax(ratios), err.shape) if err.size else ()
    max_err = float(err.max(initial=0.0))
    ratio = float(ratios.max(initial=0.0))
    _log(
        dict(err=max_err, bound=float(tol.max(initial=0.0)), ratio=ratio, terms=total_terms(terms))
    )
    if not same_nonfinite or not ratio <= 1.0:
        where = f" at {tuple(int(i) for i in worst)}" if err.size else ""
        raise AssertionError(
            f"{err_msg + ': ' if err_msg else ''}not within the fp32 rounding bound: "
            f"max |got - want| = {max_err:.3g}, bound = {c:g} * eps32 * sqrt({total_terms(terms)})"
            f" * scale = {float(tol.max(initial=0.0)):.3g}, worst ratio = {ratio:.3g}{where}"
            + ("" if same_nonfinite else "; non-finite values differ")
            + (f"\n got  = {got[worst]}\n want = {want[worst]}" if err.size else "")
        )
    return ratio


def assert_relative_error(rel: float, *, terms, c: float = C, what: str = "") -> float:
    """For an already computed max |got - want| / max |want| (e.g. conversion.parity reports):
    asserts rel <= c * eps32 * sqrt(terms); returns the ratio."""
    tol = relative_bound(terms, c)
    ratio = float(rel) / tol
    _log(dict(err=float(rel), bound=tol, ratio=ratio, terms=total_terms(terms), relative=True))
    if not ratio <= 1.0:
        raise AssertionError(
            f"{what + ': ' if what else ''}relative error {float(rel):.3g} > bound {c:g} * eps32 *"
            f" sqrt({total_terms(terms)}) = {tol:.3g} (ratio {ratio:.3g})"
        )
    return ratio


def transformer_terms(
    *,
    depth: int,
    width: int,
    mlp_dim: int,
    num_heads: int,
    head_dim: int,
    keys: int,
    layer_norm: bool = False,
) -> int:
    """The reduction lengths along a pre-norm transformer stack, summed (the `terms` of its output).

    Per layer: the attention norm over `width` (mean and variance for LayerNorm, the mean square
    for RMSNorm), the q/k/v projections (fan-in `width`, +1 for a bias), q.k (`head_dim`), the
    softmax denominator and p.v (`keys` each), the output projection (`num_heads * head_dim`,
    +1), the residual add, the MLP norm, the MLP input (`width`, +1), activation and gate (2),
    the MLP output (`mlp_dim`, +1) and its residual add; then the final norm.
    """
    norm = (2 if layer_norm else 1) * width
    attention = norm + (width + 1) + head_dim + 2 * keys + (num_heads * head_dim + 1) + 1
    mlp = norm + (width + 1) + 2 + (mlp_dim + 1) + 1
    return depth * (attention + mlp) + norm


def paligemma_forward_terms(config, num_tokens: int) -> dict[str, int]:
    """The `terms` of `conversion.parity.forward_parity`'s relative errors for an F1Config:
    "image_features" (SigLIP patch embedding + position, LayerNorm tower, projector) and
    "text_hidden" (the sqrt(width) embedding scale, the understanding expert over `num_tokens`)."""
    s, u = config.siglip, config.und
    tower = transformer_terms(
        depth=s.depth,
        width=s.width,
        mlp_dim=s.mlp_dim,
        num_heads=s.num_heads,
        head_dim=s.width // s.num_heads,
        keys=s.num_patches,
        layer_norm=True,
    )
    text = transformer_terms(
        depth=u.depth,
        width=u.width,
        mlp_dim=u.mlp_dim,
        num_heads=u.num_heads,
        head_dim=u.head_dim,
        keys=num_tokens,
    )
    return {
        "image_features": 3 * s.patch_size**2 + 2 + tower + s.width + 1,
        "text_hidden": 1 + text,
    }
