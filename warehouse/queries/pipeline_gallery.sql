-- One row per candidate of the shown posters: user, target, keywords, score, whether selected.
-- params: $run_id (NULL = newest posters), $limit (users).
WITH shown AS (
    SELECT p.user_id, p.target_movie_id
    FROM posters AS p
    WHERE $run_id IS NULL OR p.run_id = $run_id
    ORDER BY p.user_id, p.target_movie_id
    LIMIT $limit
),
final AS (
    SELECT s.user_id, s.target_movie_id, m.title, up.keywords AS preference_keywords,
           ik.keywords AS target_keywords, g.candidate, g.weight, g.seed, g.image_path, sc.d_p, sc.d_t, sc.z,
           sc.selected, up.history_movie_ids
    FROM shown AS s
    JOIN generations AS g USING (user_id, target_movie_id)
    LEFT JOIN scores AS sc USING (generation_id)
    LEFT JOIN movies AS m ON m.movie_id = s.target_movie_id
    LEFT JOIN user_preferences AS up ON up.user_id = s.user_id
    LEFT JOIN item_keywords AS ik ON ik.movie_id = s.target_movie_id
)
SELECT * FROM final ORDER BY user_id, target_movie_id, candidate
