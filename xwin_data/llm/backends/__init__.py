"""Generation backends behind `xwin_data.llm.generation.Generator`; each imports its heavy library lazily."""
