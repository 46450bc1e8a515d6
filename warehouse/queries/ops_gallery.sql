-- One row per candidate of the shown users' posters: target, keywords, history, scores, selection.
-- params: $users (INTEGER[]), $run_id (NULL = the newest posters)
WITH shown AS (
    SELECT user_id, target_movie_id FROM posters
    WHERE list_contains($users, user_id) AND ($run_id IS NULL OR run_id = $run_id)
),
final AS (
    SELECT s.user_id, s.target_movie_id, m.title, ik.keywords AS target_keywords,
           up.keywords AS preference_keywords, up.history_movie_ids,
           g.candidate, g.weight, g.seed, g.image_path, g.image_sha256, sc.d_p, sc.d_t, sc.z, sc.selected
    FROM shown AS s
    JOIN generations AS g USING (user_id, target_movie_id)
    LEFT JOIN scores AS sc USING (generation_id)
    LEFT JOIN movies AS m ON m.movie_id = s.target_movie_id
    LEFT JOIN user_preferences AS up ON up.user_id = s.user_id
    LEFT JOIN item_keywords AS ik ON ik.movie_id = s.target_movie_id
)
SELECT * FROM final ORDER BY user_id, target_movie_id, candidate
