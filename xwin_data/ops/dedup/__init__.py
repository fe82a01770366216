"""Exact and near (MinHash LSH) deduplication of conversations."""
