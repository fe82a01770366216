"""Evaluation runners and their statistics: AlpacaEval-style win rates (with a length-controlled variant) and
MT-bench single-grade and pairwise judging, with bootstrap confidence intervals."""
