"""Everything that calls a model: generation backends, the judge client, reward scoring, the request cache."""
