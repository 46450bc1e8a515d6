-- Current candidates of the (user, target) pairs in relation `pairs(user_id, target_movie_id)`.
SELECT g.user_id, g.target_movie_id, g.generation_id, g.candidate, g.image_path, g.image_sha256
FROM generations AS g
JOIN pairs USING (user_id, target_movie_id)
ORDER BY g.user_id, g.target_movie_id, g.candidate
