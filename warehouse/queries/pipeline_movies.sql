-- Title and genres of the movies in relation `ids(movie_id)`.
SELECT m.movie_id, m.title, m.genres FROM movies AS m JOIN ids USING (movie_id) ORDER BY m.movie_id
