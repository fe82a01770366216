-- funnel: per stage (current table versions), rows in, rows out, dropped and the kept share.
CREATE OR REPLACE VIEW funnel AS
SELECT
    recipe,
    stage,
    name AS table_name,
    version,
    op,
    -- a source stage (no inputs) has no rows in
    CASE WHEN coalesce(json_array_length(inputs), 0) > 0
         THEN TRY_CAST(json_extract(stats, '$.rows_in') AS BIGINT) END AS rows_in,
    rows AS rows_out,
    coalesce(n_drops, 0) AS dropped,
    CASE WHEN coalesce(json_array_length(inputs), 0) > 0
         THEN round(rows / nullif(TRY_CAST(json_extract(stats, '$.rows_in') AS BIGINT), 0), 4) END AS kept_share,
    seconds,
    created_at
FROM table_versions
WHERE is_current
ORDER BY created_at, name;
