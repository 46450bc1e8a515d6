-- Each selected user's history: the $n liked movies by rating, then recency, then movie id
-- (the order of tasks.pmg.history.select_history), leaving out the user's excluded (held-out) movie.
-- relation `selected(user_id, exclude_movie_id)` registered by the caller.
WITH liked AS (
    SELECT r.user_id, r.movie_id, r.rating, r.rated_at
    FROM ratings AS r
    JOIN selected AS s USING (user_id)
    WHERE r.rating >= $min_rating
      AND (s.exclude_movie_id IS NULL OR r.movie_id <> s.exclude_movie_id)
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY rating DESC, rated_at DESC, movie_id) AS rn
    FROM liked
),
final AS (
    SELECT k.user_id, k.movie_id, m.title, m.genres, k.rating, k.rated_at, k.rn
    FROM ranked AS k
    LEFT JOIN movies AS m USING (movie_id)
    WHERE k.rn <= $n
)
SELECT user_id, movie_id, title, genres, rating, rated_at FROM final ORDER BY user_id, rn
