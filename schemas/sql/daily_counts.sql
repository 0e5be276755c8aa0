-- Per day (UTC, of processing time) and source: images embedded, deletions recorded,
-- distinct objects touched, and dead letters, over the last @days days. Rows are
-- counted once per row_key, so duplicate deliveries do not inflate the counts. The
-- tables are partitioned by day on processing_time: the date filter prunes partitions.
-- params: @days INT64
-- placeholders: embeddings, dead_letters
WITH embedded AS (
  SELECT
    DATE(MIN(processing_time)) AS day,
    ANY_VALUE(source) AS source,
    ANY_VALUE(event_type) AS event_type,
    ANY_VALUE(bucket) AS bucket,
    ANY_VALUE(name) AS name
  FROM {embeddings}
  WHERE processing_time >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @days DAY)
  GROUP BY row_key
),
per_day AS (
  SELECT
    day,
    source,
    COUNTIF(event_type = 'OBJECT_FINALIZE') AS embedded,
    COUNTIF(event_type = 'OBJECT_DELETE') AS deleted,
    COUNT(DISTINCT CONCAT(bucket, '/', name)) AS objects
  FROM embedded
  GROUP BY day, source
),
dead AS (
  SELECT DATE(processing_time) AS day, COUNT(DISTINCT row_key) AS dead_letters
  FROM {dead_letters}
  WHERE processing_time >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @days DAY)
  GROUP BY day
)
SELECT
  COALESCE(p.day, d.day) AS day,
  p.source,
  COALESCE(p.embedded, 0) AS embedded,
  COALESCE(p.deleted, 0) AS deleted,
  COALESCE(p.objects, 0) AS objects,
  COALESCE(d.dead_letters, 0) AS dead_letters_that_day
FROM per_day AS p
FULL OUTER JOIN dead AS d ON p.day = d.day
ORDER BY day DESC, source
