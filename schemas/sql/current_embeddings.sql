-- The current embedding of every object: one row per (bucket, name), from its newest
-- generation, and nothing for an object whose newest event is a deletion.
--
-- Why a view: Pub/Sub delivers at least once and BigQuery's insert-id de-duplication
-- is best effort, so the table may hold the same row_key more than once; an overwrite
-- adds a row for the new generation; a delete adds a tombstone (event_type
-- OBJECT_DELETE, same generation). The view ranks each object's rows by generation,
-- a tombstone before an embedding of the same generation, then the latest write, and
-- keeps the first if it is an embedding.
CREATE OR REPLACE VIEW {current} AS
SELECT * EXCEPT (rank_in_object)
FROM (
  SELECT
    *,
    ROW_NUMBER() OVER (
      PARTITION BY bucket, name
      ORDER BY generation DESC,
               IF(event_type = 'OBJECT_DELETE', 0, 1),
               processing_time DESC,
               row_key
    ) AS rank_in_object
  FROM {embeddings}
)
WHERE rank_in_object = 1
  AND event_type = 'OBJECT_FINALIZE'
