"""WIND in its exact tabular form, on a contextual bandit: the reference the sample-efficient trainer approximates.

Per context x, with a preference matrix P[y, y'] = Pr(y beats y') (P + P^T = 1, P[y, y] = 1/2), the win rate of
y against a policy π is w_π(y) = Σ_y' π(y') P[y, y']. One WIND iteration is the magnetic mirror-descent step

    π_{t+1}(y) ∝ (π_t(y) · π_ref(y)^{ηβ} · exp(η · w_{π_t}(y)))^{1/(1+ηβ)}

whose fixed point is the KL-regularised symmetric equilibrium π*(y) ∝ π_ref(y) · exp(w_{π*}(y) / β).
`regularized_equilibrium` finds that point independently (Newton's method on the fixed-point equation), so
tests can check that the last iterate converges to it linearly. `iterated_best_of_n` is what plain iterative
best-of-N distillation converges to on the same bandit: all mass on the reward's argmax.
"""
from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def bradley_terry(rewards: np.ndarray) -> np.ndarray:
    """P[x, y, y'] = sigmoid(r[x, y] - r[x, y']) for rewards of shape (contexts, actions)."""
    r = np.asarray(rewards, dtype=float)
    return 1.0 / (1.0 + np.exp(-(r[:, :, None] - r[:, None, :])))


def check_preferences(P: np.ndarray) -> None:
    if P.ndim != 3 or P.shape[1] != P.shape[2]:
        raise ValueError(f"P must have shape (contexts, actions, actions), got {P.shape}")
    if not np.allclose(P + P.transpose(0, 2, 1), 1.0, atol=1e-12):
        raise ValueError("P[y, y'] + P[y', y] must be 1 (a preference probability)")


def win_rates(P: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """w[x, y] = Σ_y' π[x, y'] P[x, y, y']."""
    return np.einsum("xij,xj->xi", P, pi)


def wind_step(pi: np.ndarray, pi_ref: np.ndarray, P: np.ndarray, eta: float, beta: float) -> np.ndarray:
    """One exact WIND iteration (computed in log space)."""
    logits = (np.log(pi) + eta * beta * np.log(pi_ref) + eta * win_rates(P, pi)) / (1.0 + eta * beta)
    return softmax(logits)


def run_wind(pi_ref: np.ndarray, P: np.ndarray, eta: float, beta: float, iterations: int,
             pi0: np.ndarray | None = None) -> list[np.ndarray]:
    """Iterates π_0 (= π_ref unless given), π_1, ..., π_T."""
    check_preferences(P)
    pis = [np.array(pi_ref if pi0 is None else pi0, dtype=float)]
    for _ in range(iterations):
        pis.append(wind_step(pis[-1], pi_ref, P, eta, beta))
    return pis


def regularized_equilibrium(pi_ref: np.ndarray, P: np.ndarray, beta: float, tol: float = 1e-13,
                            max_iter: int = 100) -> np.ndarray:
    """The solution of π = softmax(log π_ref + Pπ / β) per context, by Newton's method (independent of WIND)."""
    check_preferences(P)
    out = np.empty_like(pi_ref, dtype=float)
    for x in range(pi_ref.shape[0]):
        pi = pi_ref[x].astype(float).copy()
        for _ in range(max_iter):
            s = softmax(np.log(pi_ref[x]) + P[x] @ pi / beta)
            residual = pi - s
            if np.abs(residual).max() < tol:
                break
            jac = np.eye(len(pi)) - (np.diag(s) - np.outer(s, s)) @ P[x] / beta
            pi = pi - np.linalg.solve(jac, residual)
            pi = np.clip(pi, 1e-300, None)
            pi /= pi.sum()
        else:
            raise RuntimeError(f"Newton's method did not converge for context {x}")
        out[x] = pi
    return out


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per context."""
    return np.sum(np.where(p > 0, p * (np.log(np.clip(p, 1e-300, None)) - np.log(q)), 0.0), axis=-1)


def best_of_n(pi: np.ndarray, rewards: np.ndarray, n: int) -> np.ndarray:
    """The distribution of the best of n independent draws from π (ties in reward share their mass evenly)."""
    out = np.zeros_like(pi, dtype=float)
    for x in range(pi.shape[0]):
        r, p = rewards[x], pi[x] / pi[x].sum()
        for value in np.unique(r):
            at = p[r == value]
            below = min(1.0, p[r < value].sum())
            mass = min(1.0, below + at.sum()) ** n - below ** n
            out[x][r == value] = mass * at / at.sum() if at.sum() > 0 else 0.0
        out[x] /= out[x].sum()  # rounding only: the masses sum to 1 exactly in real arithmetic
    return out


def iterated_best_of_n(pi_ref: np.ndarray, rewards: np.ndarray, n: int, iterations: int) -> list[np.ndarray]:
    """Iterative best-of-n distillation with exact distillation: π_{t+1} = BoN_n(π_t)."""
    pis = [np.array(pi_ref, dtype=float)]
    for _ in range(iterations):
        pis.append(best_of_n(pis[-1], rewards, n))
    return pis
