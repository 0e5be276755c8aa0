-- Dead letters of the last @days days by stage and reason (the codes are listed in
-- docs/reliability.md): how many, how many distinct objects, first and last seen, and one
-- example object and error to start from.
-- params: @days INT64
-- placeholders: dead_letters
SELECT
  stage,
  reason,
  COUNT(*) AS dead_letters,
  COUNT(DISTINCT uri) AS objects,
  MIN(processing_time) AS first_seen,
  MAX(processing_time) AS last_seen,
  ANY_VALUE(uri) AS example_uri,
  ANY_VALUE(error) AS example_error
FROM {dead_letters}
WHERE processing_time >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @days DAY)
GROUP BY stage, reason
ORDER BY dead_letters DESC, stage, reason
