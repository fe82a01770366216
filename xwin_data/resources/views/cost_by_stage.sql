-- cost_by_stage: model calls, tokens and dollars per stage, from the cost fields stages record in their stats
-- (`cost_usd`, `*_cost_usd`, `cost` as a number or an object with `usd`/`total_usd`, `*prompt_tokens`,
-- `*completion_tokens`, `calls`/`requests`), read from the stage_stats view. A stage that called no model has zeros.
CREATE OR REPLACE VIEW cost_by_stage AS
WITH nums AS (
    SELECT recipe, stage, table_name, lower(key) AS key, value FROM stage_stats
)
SELECT
    t.recipe, t.stage, t.name AS table_name,
    coalesce(sum(value) FILTER (WHERE regexp_matches(key, '(^|\.)(calls|requests)$')), 0)::BIGINT AS calls,
    coalesce(sum(value) FILTER (WHERE regexp_matches(key, '(prompt|input)_tokens$')), 0)::BIGINT AS prompt_tokens,
    coalesce(sum(value) FILTER (WHERE regexp_matches(key, '(completion|output)_tokens$')), 0)::BIGINT AS completion_tokens,
    round(coalesce(sum(value) FILTER (WHERE key = 'cost' OR regexp_matches(key, '(cost_usd|\.usd|\.total_usd)$')), 0), 6)
        AS cost_usd
FROM table_versions t LEFT JOIN nums n ON n.table_name = t.name AND n.stage IS NOT DISTINCT FROM t.stage
WHERE t.is_current
GROUP BY ALL
ORDER BY cost_usd DESC, t.stage;
