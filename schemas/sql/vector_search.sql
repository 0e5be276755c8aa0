-- requires: VECTOR_SEARCH (BigQuery; the emulator has no vector search)
-- The k current objects nearest to a query embedding with BigQuery's VECTOR_SEARCH,
-- cosine distance. With a vector index (create_vector_index.sql) the search is
-- approximate (ANN) and reads a fraction of the table; without one, or below 10 MB of
-- table (about 640 rows of 2048 FLOAT64), BigQuery searches by brute force: the same
-- answer as nearest_neighbours.sql, which is the exact fallback and runs everywhere.
--
-- The search runs on the table, not on the current view (BigQuery does not use the
-- index through a logical view), pre-filtered on columns the index stores
-- (event_type, model_fingerprint), then post-filtered to current rows by joining the
-- view on row_key. Superseded generations, deleted objects and duplicate deliveries
-- take candidate slots, so ask for more candidates (top_k) than you keep (@k);
-- embed-search asks for 4 k + 20. (WHERE TRUE: older releases want a WHERE next to
-- QUALIFY.)
-- params: @query_embedding ARRAY<FLOAT64>, @model_fingerprint STRING, @k INT64
-- placeholders: embeddings, current, top_k
SELECT
  c.bucket, c.name, c.generation, c.source, c.content_type, c.width, c.height,
  c.format, c.model_fingerprint, c.vector_uri, c.vector_index, c.event_time, c.processing_time,
  hit.distance
FROM VECTOR_SEARCH(
  (SELECT row_key, embedding
   FROM {embeddings}
   WHERE event_type = 'OBJECT_FINALIZE'
     AND model_fingerprint = @model_fingerprint),
  'embedding',
  (SELECT @query_embedding AS embedding),
  top_k => {top_k},
  distance_type => 'COSINE'
) AS hit
JOIN {current} AS c ON c.row_key = hit.base.row_key
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (PARTITION BY c.bucket, c.name ORDER BY hit.distance) = 1
ORDER BY hit.distance, c.bucket, c.name
LIMIT @k
