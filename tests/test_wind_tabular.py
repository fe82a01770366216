"""Exact (tabular) WIND on contextual bandits: linear last-iterate convergence to the regularised equilibrium,
computed independently by Newton's method, and the contrast with iterated best-of-N's limit."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from xwin_data.training.wind_tabular import (best_of_n, bradley_terry, iterated_best_of_n, kl,
                                             regularized_equilibrium, run_wind, softmax, win_rates)

X, Y = 6, 8


@pytest.fixture
def bandit():
    rng = np.random.default_rng(7)
    rewards = rng.normal(size=(X, Y)) * 2.0
    pi_ref = softmax(rng.normal(size=(X, Y)))
    return rewards, bradley_terry(rewards), pi_ref


def general_preferences(seed: int) -> np.ndarray:
    """A random preference matrix with cycles (not from any reward): P + P^T = 1, P[y, y] = 1/2."""
    rng = np.random.default_rng(seed)
    upper = rng.uniform(0.05, 0.95, size=(X, Y, Y))
    P = np.triu(upper, 1)
    P = P + np.transpose(1.0 - P, (0, 2, 1)) * (np.tril(np.ones((Y, Y)), -1)[None])
    idx = np.arange(Y)
    P[:, idx, idx] = 0.5
    return P


def log_error(pi: np.ndarray, star: np.ndarray) -> float:
    return float(np.abs(np.log(pi) - np.log(star)).max())


@pytest.mark.parametrize("eta,beta", [(1.0, 0.5), (2.0, 0.2), (0.5, 1.0)])
@pytest.mark.parametrize("prefs", ["bradley_terry", "cyclic"])
def test_last_iterate_converges_linearly_to_the_regularised_equilibrium(bandit, eta, beta, prefs):
    _, P, pi_ref = bandit
    if prefs == "cyclic":
        P = general_preferences(3)
        # a real cycle exists: some y beats y' beats y'' beats y
        assert any(P[0, a, b] > .5 and P[0, b, c] > .5 and P[0, c, a] > .5
                   for a, b, c in itertools.permutations(range(Y), 3))
    star = regularized_equilibrium(pi_ref, P, beta)
    # the equilibrium solves pi = softmax(log pi_ref + w_pi / beta) (checked directly, not via WIND)
    assert np.abs(star - softmax(np.log(pi_ref) + win_rates(P, star) / beta)).max() < 1e-12

    iterates = run_wind(pi_ref, P, eta, beta, 400)
    assert log_error(iterates[0], star) > 1e-2            # starts away from the answer
    assert log_error(iterates[-1], star) < 1e-11          # and ends at it (last iterate, no averaging)
    # linear rate in KL(pi* || pi_t), the divergence of magnetic mirror descent's guarantee:
    # KL_{t+1} <= KL_t / (1 + eta*beta) at every iteration
    errors = [float(kl(star, pi).max()) for pi in iterates]
    ratios = [errors[t + 1] / errors[t] for t in range(len(errors) - 1) if errors[t] > 1e-12]
    assert len(ratios) > 10
    rho = max(ratios)
    assert rho <= 1.0 / (1.0 + eta * beta), f"per-iteration KL ratio {rho:.3f} above 1/(1+eta*beta)"
    assert min(ratios) > 0.2 * rho  # linear, not superlinear: the ratio does not collapse toward 0


def test_best_of_n_matches_enumeration():
    rng = np.random.default_rng(1)
    rewards = np.array([[0.3, -1.0, 2.0, 0.3, 1.1]])
    pi = softmax(rng.normal(size=(1, 5)))
    n = 3
    brute = np.zeros(5)
    for draw in itertools.product(range(5), repeat=n):
        p = np.prod([pi[0, i] for i in draw])
        best = max(rewards[0, i] for i in draw)
        winners = [i for i in set(draw) if rewards[0, i] == best]
        tied = [i for i in range(5) if rewards[0, i] == best]
        # ties share their mass in proportion to pi (what best_of_n documents)
        for i in tied:
            brute[i] += p * pi[0, i] / sum(pi[0, j] for j in tied) if winners else 0.0
    assert np.allclose(best_of_n(pi, rewards, n)[0], brute, atol=1e-12)


def test_iterated_best_of_n_collapses_while_wind_stays_near_the_reference(bandit):
    rewards, P, pi_ref = bandit
    winner = rewards.argmax(axis=1)
    rows = np.arange(X)
    # the Condorcet winner of a Bradley-Terry preference is the reward's argmax
    assert all((P[x, winner[x]][np.arange(Y) != winner[x]] > 0.5).all() for x in range(X))

    bon = iterated_best_of_n(pi_ref, rewards, n=4, iterations=40)[-1]
    assert bon[rows, winner].min() > 1 - 1e-9                 # iterated BoN: all mass on the winner

    betas = [0.1, 0.3, 1.0, 3.0]
    stars = [regularized_equilibrium(pi_ref, P, b) for b in betas]
    wind = run_wind(pi_ref, P, eta=1.0, beta=0.3, iterations=300)[-1]
    assert np.abs(wind - stars[1]).max() < 1e-10

    # WIND's fixed point moves toward the winner but keeps the reference's support and stays close to it
    assert (wind[rows, winner] > pi_ref[rows, winner]).all()
    assert wind[rows, winner].max() < 0.9
    assert wind.min() > 0
    kl_wind, kl_bon = kl(wind, pi_ref), kl(np.clip(bon, 1e-300, None), pi_ref)
    assert (kl_wind < 0.5).all() and (kl_bon > 2 * kl_wind).all()
    assert (kl_bon >= -np.log(pi_ref[rows, winner]) - 1e-6).all()  # BoN's KL is that of a point mass
    # it beats the reference more often than not, and less than the collapsed policy does
    beat_ref = lambda pi: np.einsum("xi,xij,xj->x", pi, P, pi_ref)  # noqa: E731
    assert (beat_ref(wind) > 0.5).all() and (beat_ref(bon) > beat_ref(wind)).all()
    # less regularisation -> more mass on the winner; beta -> 0 approaches the BoN limit
    mass = np.array([s[rows, winner] for s in stars])
    assert (np.diff(mass, axis=0) < 0).all()
    assert mass[0].mean() > mass[-1].mean() + 0.2
