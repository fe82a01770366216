-- drops_by_reason: how many records each table lost and why, in what unit, with one example detail.
CREATE OR REPLACE VIEW drops_by_reason AS
SELECT stage, table_name, reason, coalesce(unit, 'rows') AS unit, count(*) AS dropped,
       any_value(source_id) AS example_id, left(any_value(detail), 300) AS example_detail
FROM drops
GROUP BY ALL
ORDER BY dropped DESC, stage, reason;
