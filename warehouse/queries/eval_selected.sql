-- Selected candidates of one evaluation run at one alpha (what the summary averages), for analysts.
WITH chosen AS (
    SELECT * FROM evaluations WHERE run_id = $run_id AND selected AND abs(alpha - $alpha) < 1e-9
),
final AS (
    SELECT variant, user_id, target_movie_id, candidate, d_p, d_t, z, ssim_target, ssim_history, image_path
    FROM chosen
)
SELECT * FROM final ORDER BY variant, user_id, target_movie_id
