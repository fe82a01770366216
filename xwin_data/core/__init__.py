"""The build core: recipe, plan and engine, stage context, catalog, fingerprints, validation, workers, errors.

Domain packages (ops, llm, training, studies, evals, exports) build on it; it imports none of them except the
op registry the engine resolves stage ops from.
"""
