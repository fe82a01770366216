-- funnel: per table (current versions), what one row is (unit), records in, rows out and drops, all in that unit.
-- rows_in is NULL where the stage makes a new unit from its input (pieces from conversations, pairs from a set);
-- drops counted in another unit (a turn cut from a kept conversation, an unscored response of a pair table) are
-- listed in other_drops, never mixed into dropped.
CREATE OR REPLACE VIEW funnel AS
SELECT
    recipe,
    stage,
    name AS table_name,
    version,
    op,
    coalesce(json_extract_string(stats, '$.unit'), 'rows') AS unit,
    -- for a source stage, rows in are the records it read: kept plus dropped
    TRY_CAST(json_extract(stats, '$.rows_in') AS BIGINT) AS rows_in,
    rows AS rows_out,
    coalesce(TRY_CAST(json_extract(stats, '$.dropped') AS BIGINT), n_drops, 0) AS dropped,
    round(rows / nullif(TRY_CAST(json_extract(stats, '$.rows_in') AS BIGINT), 0), 4) AS kept_share,
    nullif(json_extract(stats, '$.dropped_other_units')::VARCHAR, '{}') AS other_drops,
    seconds,
    created_at
FROM table_versions
WHERE is_current
ORDER BY created_at, name;
