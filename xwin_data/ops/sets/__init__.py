"""Xwin-Set ops: 64-way sampling, reward scoring, and the products derived from the set."""
