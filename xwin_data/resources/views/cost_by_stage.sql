-- cost_by_stage: model calls, tokens and dollars per stage, from the cost fields stages record in their stats
-- (`cost_usd`, `*_cost_usd`, `cost` as a number or an object with `usd`/`total_usd`, `*prompt_tokens`,
-- `*completion_tokens`, `calls`/`requests`). A stage that called no model has zeros.
CREATE OR REPLACE VIEW cost_by_stage AS
WITH top AS (
    SELECT recipe, stage, name AS table_name, stats, unnest(json_keys(stats)) AS key
    FROM table_versions WHERE is_current AND stats IS NOT NULL AND json_type(stats) = 'OBJECT'
), flat AS (
    SELECT recipe, stage, table_name, key, json_extract(stats, '$."' || key || '"') AS v FROM top
), nested AS (
    SELECT recipe, stage, table_name, key, v, unnest(json_keys(v)) AS k2 FROM flat WHERE json_type(v) = 'OBJECT'
), leaves AS (
    SELECT recipe, stage, table_name, lower(key) AS key, v FROM flat
    UNION ALL
    SELECT recipe, stage, table_name, lower(key || '.' || k2), json_extract(v, '$."' || k2 || '"') FROM nested
), nums AS (
    SELECT recipe, stage, table_name, key, v::DOUBLE AS value FROM leaves
    WHERE json_type(v) IN ('DOUBLE', 'BIGINT', 'UBIGINT', 'INTEGER')
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
