-- Selected posters of one run and their mean scores. params: $run_id
SELECT count(*) AS posters, avg(z) AS mean_z, avg(d_p) AS mean_d_p, avg(d_t) AS mean_d_t
FROM scores
WHERE run_id = $run_id AND selected
