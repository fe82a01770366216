"""Xwin-Pair ops: prompts, candidate generation, pairs, judging."""
