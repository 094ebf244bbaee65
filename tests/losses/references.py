"""Independent float64 references written from the papers' equations, in NumPy.

They evaluate each formula literally (probabilities first, then logs), which is exact enough for
the moderate logits the tests feed them; the library computes from logits instead.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def one_hot(labels, num_classes):
    y = np.zeros((len(labels), num_classes))
    for n, c in enumerate(labels):
        if c < num_classes:
            y[n, c] = 1.0
    return y


def reduce(loss, weight=None, reduction="mean", avg_factor=None):
    loss = np.asarray(loss, dtype=np.float64)
    if weight is not None:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.ndim == 1 and loss.ndim == 2:
            weight = weight[:, None]
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if avg_factor is not None:
        return loss.sum() / avg_factor
    return loss.sum() / max(loss.size, 1)


def focal(x, y, alpha, gamma):
    """Eq. 5 of arXiv 1708.02002 with torchvision's soft-target p_t = p y + (1 - p)(1 - y)."""
    p = sigmoid(x)
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    loss = (1 - p_t) ** gamma * ce
    if alpha is not None:
        loss = loss * (alpha * y + (1 - alpha) * (1 - y))
    return loss


def focal_star(x, y01, gamma, beta):
    """FL* (appendix A): p_t* = sigmoid(gamma y x + beta), FL* = -log(p_t*) / gamma, y in {-1, 1}."""
    y = 2 * y01 - 1
    # -log(sigmoid(z)) = log(1 + exp(-z)), written with log1p so that small losses keep their digits
    return np.log1p(np.exp(-(gamma * y * x + beta))) / gamma


def softmax_focal(x, labels, gamma, alpha):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    s = e / e.sum(axis=1, keepdims=True)
    p_t = s[np.arange(len(labels)), labels]
    loss = -((1 - p_t) ** gamma) * np.log(p_t)
    if alpha is not None:
        loss = loss * np.where(labels == 0, 1 - alpha, alpha)
    return loss


def quality_focal(x, labels, scores, beta):
    """Eq. 5 of arXiv 2006.04388: -|y - s|^beta ((1 - y) log(1 - s) + y log(s))."""
    n, c = x.shape
    y = np.zeros((n, c))
    for i in range(n):
        if labels[i] < c:
            y[i, labels[i]] = scores[i]
    s = sigmoid(x)
    return -(np.abs(y - s) ** beta) * ((1 - y) * np.log(1 - s) + y * np.log(s))


def distribution_focal(x, target):
    """Eq. 6 of arXiv 2006.04388 with the target clamped to [0, reg_max - 0.01]."""
    n, bins = x.shape
    out = np.zeros(n)
    for i in range(n):
        y = min(max(target[i], 0.0), bins - 1 - 0.01)
        yl = int(np.floor(y))
        yr = yl + 1
        e = np.exp(x[i] - x[i].max())
        s = e / e.sum()
        out[i] = -((yr - y) * np.log(s[yl]) + (y - yl) * np.log(s[yr]))
    return out
