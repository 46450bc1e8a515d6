-- Current poster keywords of the movies in relation `ids(movie_id)`.
SELECT k.movie_id, k.keywords FROM item_keywords AS k JOIN ids USING (movie_id)
