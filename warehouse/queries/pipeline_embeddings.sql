-- Current soft preference embeddings (file locations) of the users in relation `ids(user_id)`.
SELECT e.user_id, e.path FROM preference_embeddings AS e JOIN ids USING (user_id)
