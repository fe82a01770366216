"""The recipe stage that reads a planted scored set (`set.jsonl` beside the recipe) as an `xwin_set`-shaped
table, shared by the tests of the derived-table ops."""

SET_FROM_JSONL_STAGE = """\
  - id: xwin_set
    op: sql
    params:
      query: >-
        SELECT prompt_id, prompt::STRUCT(role VARCHAR, content VARCHAR)[] AS prompt, response_id,
               sample_index::INTEGER AS sample_index, response, score::DOUBLE AS score
        FROM read_json('${recipe_dir}/set.jsonl')
"""
