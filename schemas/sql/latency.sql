-- Latency from the storage event (event_time: when Cloud Storage reported the upload;
-- the file's mtime for local runs) to the row being written (processing_time), per
-- day and source, in seconds: count, median, 90th and 99th percentile (approximate),
-- maximum. Each row_key counts once, at its first write, so redelivered notifications
-- do not show up as slow. Backfill rows measure the age of old objects, not the job's
-- speed: read the `notification` rows for the streaming latency.
-- params: @days INT64
-- placeholders: embeddings
WITH firsts AS (
  SELECT
    row_key,
    ANY_VALUE(source) AS source,
    MIN(event_time) AS event_time,
    MIN(processing_time) AS processing_time
  FROM {embeddings}
  WHERE processing_time >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @days DAY)
    AND event_type = 'OBJECT_FINALIZE'
    AND event_time IS NOT NULL
  GROUP BY row_key
),
latencies AS (
  SELECT
    DATE(processing_time) AS day,
    source,
    TIMESTAMP_DIFF(processing_time, event_time, MILLISECOND) / 1000 AS seconds
  FROM firsts
)
SELECT
  day,
  source,
  COUNT(*) AS images,
  APPROX_QUANTILES(seconds, 100)[OFFSET(50)] AS p50_s,
  APPROX_QUANTILES(seconds, 100)[OFFSET(90)] AS p90_s,
  APPROX_QUANTILES(seconds, 100)[OFFSET(99)] AS p99_s,
  MAX(seconds) AS max_s
FROM latencies
GROUP BY day, source
ORDER BY day DESC, source
