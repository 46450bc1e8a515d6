-- Every user with at least one rating, in id order.
SELECT DISTINCT user_id FROM ratings ORDER BY user_id
