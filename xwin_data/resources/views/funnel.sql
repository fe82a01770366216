-- funnel: per stage (current table versions), rows in, rows out, dropped and the kept share.
CREATE OR REPLACE VIEW funnel AS
SELECT
    recipe,
    stage,
    name AS table_name,
    version,
    op,
    -- for a source stage (no inputs), rows in are the records it read: kept plus dropped
    TRY_CAST(json_extract(stats, '$.rows_in') AS BIGINT) AS rows_in,
    rows AS rows_out,
    coalesce(n_drops, 0) AS dropped,
    round(rows / nullif(TRY_CAST(json_extract(stats, '$.rows_in') AS BIGINT), 0), 4) AS kept_share,
    seconds,
    created_at
FROM table_versions
WHERE is_current
ORDER BY created_at, name;
