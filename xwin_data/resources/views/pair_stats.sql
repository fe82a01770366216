-- pair_stats: Xwin-Pair at a glance per judge and template: pairs, order-consistent share, strength, and how
-- often the chosen response is the longer one (a length-bias signal; 0.5 means none).
CREATE OR REPLACE VIEW pair_stats AS
SELECT judge, template_version, count(*) AS pairs,
       round(avg(consistent::INTEGER), 4) AS consistent_share,
       round(avg(strength), 4) AS mean_strength,
       round(avg((length(chosen::VARCHAR) > length(rejected::VARCHAR))::INTEGER), 4) AS chosen_longer_share
FROM xwin_pair
GROUP BY ALL
ORDER BY pairs DESC;
