"""Ops that bring data into the catalog: ShareGPT-style files, generic SQL."""
