-- Current preference keywords of the users in relation `ids(user_id)`.
SELECT p.user_id, p.keywords, p.history_fingerprint FROM user_preferences AS p JOIN ids USING (user_id)
