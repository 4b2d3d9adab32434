"""Calibrated probabilities: logistic (Platt) recalibration of a head's probabilities.

A network trained with a weighted BCE + soft-Dice loss and thresholded at a tuned value gives
probabilities that are not frequencies: the sum of its infection probabilities over a scan is
not an estimate of the infected volume. A two-parameter logistic map on the logit,

    p' = sigmoid(slope * logit(p) + offset),

fitted by weighted maximum likelihood on out-of-fold predictions (data the network never saw),
makes them so on average (Platt scaling; temperature scaling is the special case ``offset = 0``).
It is monotonic, so a threshold on ``p'`` is a threshold on ``p``: masks change only through the
threshold chosen on calibrated probabilities.

:func:`calibrate` is applied in the one inference path (:mod:`covseg.inference.segmenter`);
:func:`fit_platt` is run by :mod:`covseg.studies.burden` on out-of-fold probabilities.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

__all__ = ["EPS", "calibrate", "fit_platt", "logit"]

#: Probabilities are clipped to ``[EPS, 1 - EPS]`` before the logit (float32-safe).
EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of ``p`` clipped to ``[EPS, 1 - EPS]``, as float64."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def calibrate(p: np.ndarray, slope: float, offset: float) -> np.ndarray:
    """``sigmoid(slope * logit(p) + offset)``, in ``p``'s float dtype (float32 for others).

    The identity map (``slope 1, offset 0``) returns ``p`` itself, unchanged and uncopied.

    Args:
        p: probabilities of any shape.
        slope: logit scale (``1 / temperature``).
        offset: logit shift (``< 0`` lowers every probability).

    Returns:
        Calibrated probabilities, same shape.
    """
    if slope == 1.0 and offset == 0.0:
        return p
    dtype = p.dtype if np.issubdtype(np.asarray(p).dtype, np.floating) else np.float32
    z = slope * logit(p) + offset
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(dtype, copy=False)


def fit_platt(
    p: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """``(slope, offset)`` that maximise the weighted Bernoulli likelihood of ``truth`` under
    ``calibrate(p, slope, offset)``.

    Args:
        p: ``(N,)`` probabilities (any shape; flattened).
        truth: ``(N,)`` booleans, same shape.
        weights: ``(N,)`` non-negative weights (e.g. so that every data source counts equally);
            default all 1.

    Returns:
        ``(slope, offset)`` as floats; ``(1.0, 0.0)`` when ``truth`` is all one class (nothing
        to fit).

    Raises:
        ValueError: shapes differ, or no positive weight.
    """
    z = logit(p).ravel()
    y = np.asarray(truth, dtype=bool).ravel()
    if z.shape != y.shape:
        raise ValueError(f"fit_platt: {z.shape[0]} probabilities but {y.shape[0]} labels")
    w = np.ones_like(z) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != z.shape or not (w >= 0).all() or w.sum() <= 0:
        raise ValueError("fit_platt: weights must be non-negative, one per label, not all 0")
    w = w / w.sum()
    if w[y].sum() == 0 or w[~y].sum() == 0:
        return 1.0, 0.0
    sign = np.where(y, -1.0, 1.0)

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        s = theta[0] * z + theta[1]
        # -log sigmoid(s) for positives, -log(1 - sigmoid(s)) for negatives: softplus(sign * s)
        u = sign * s
        loss = np.logaddexp(0.0, u)
        g = sign / (1.0 + np.exp(-u))  # d loss / d s
        return float((w * loss).sum()), np.array([(w * g * z).sum(), (w * g).sum()])

    res = optimize.minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])
