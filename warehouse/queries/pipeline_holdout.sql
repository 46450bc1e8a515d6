-- Each selected user's held-out liked movie: the most recent rating >= $min_rating (ties: higher movie id).
-- relation `selected(user_id)` registered by the caller.
WITH liked AS (
    SELECT r.user_id, r.movie_id,
           row_number() OVER (PARTITION BY r.user_id ORDER BY r.rated_at DESC, r.movie_id DESC) AS rn
    FROM ratings AS r
    JOIN selected AS s USING (user_id)
    WHERE r.rating >= $min_rating
),
final AS (
    SELECT user_id, movie_id AS target_movie_id FROM liked WHERE rn = 1
)
SELECT * FROM final ORDER BY user_id
