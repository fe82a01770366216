-- stage_stats: every numeric statistic a stage recorded (top level and one level nested), one row each.
CREATE OR REPLACE VIEW stage_stats AS
WITH top AS (
    SELECT recipe, stage, name AS table_name, stats, unnest(json_keys(stats)) AS key
    FROM table_versions WHERE is_current AND stats IS NOT NULL AND json_type(stats) = 'OBJECT'
), flat AS (
    SELECT recipe, stage, table_name, key, json_extract(stats, '$."' || key || '"') AS v FROM top
), nested AS (
    SELECT recipe, stage, table_name, key, v, unnest(json_keys(v)) AS k2 FROM flat WHERE json_type(v) = 'OBJECT'
), leaves AS (
    SELECT recipe, stage, table_name, key, v FROM flat
    UNION ALL
    SELECT recipe, stage, table_name, key || '.' || k2, json_extract(v, '$."' || k2 || '"') FROM nested
)
SELECT recipe, stage, table_name, key, v::DOUBLE AS value
FROM leaves
WHERE json_type(v) IN ('DOUBLE', 'BIGINT', 'UBIGINT', 'INTEGER');
