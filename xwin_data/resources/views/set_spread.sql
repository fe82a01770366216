-- set_spread: per prompt of xwin_set, how many responses and how far apart their reward scores are.
CREATE OR REPLACE VIEW set_spread AS
SELECT prompt_id, count(*) AS responses, min(score) AS min_score, max(score) AS max_score,
       avg(score) AS mean_score, stddev_samp(score) AS std_score, max(score) - min(score) AS spread
FROM xwin_set
GROUP BY prompt_id
ORDER BY spread DESC;
