-- requires: CREATE VECTOR INDEX (BigQuery DDL; the emulator has no vector indexes)
-- An IVF index on the 2048-d embeddings, for vector_search.sql.
--
-- When it pays: without an index every search reads the whole embedding column,
-- 2048 FLOAT64 = 16 KiB a row (1.6 GB per query at 100,000 rows, 16 GB at a million).
-- Below 10 MB of table (about 640 rows) BigQuery does not populate the index at all
-- (INFORMATION_SCHEMA.VECTOR_INDEXES shows coverage_percentage 0; the job statistics
-- say BASE_TABLE_TOO_SMALL) and searches by brute force; up to some tens of thousands
-- of rows the exact query (nearest_neighbours.sql) is cheap enough. Index once the
-- table has ~100,000 rows or is searched often. Rows not yet indexed are still
-- searched (brute force), so results stay complete while the index catches up.
--
-- Settings: IVF (k-means lists; the type for few queries at a time; TREE_AH suits
-- large query batches); distance_type COSINE (the embeddings are not normalised).
-- num_lists (at most 5000): a usual start is rows / 1000 up to a million rows and
-- sqrt(rows) above (analysis.sql.suggest_num_lists); leave ivf_options out to let
-- BigQuery choose from the data. More lists make each list smaller; VECTOR_SEARCH's
-- options => '{{"fraction_lists_to_search": 0.05}}' then trades recall for speed.
-- STORING the filter columns lets vector_search.sql pre-filter by fingerprint and
-- event type inside the index and return row_key without a join.
--
-- Tombstones: BigQuery wants every indexed array to have the same dimension, and
-- OBJECT_DELETE rows carry an empty embedding. If the index reports a dimension
-- problem, index a table of the embedded rows instead (e.g. a scheduled
-- CREATE OR REPLACE TABLE ... AS SELECT * FROM the table WHERE event_type =
-- 'OBJECT_FINALIZE') and point vector_search.sql's {{embeddings}} at it.
-- Check progress with:
--   SELECT index_name, index_status, coverage_percentage, last_refresh_time
--   FROM `PROJECT.DATASET.INFORMATION_SCHEMA.VECTOR_INDEXES`
-- params:
-- placeholders: embeddings, num_lists
CREATE VECTOR INDEX IF NOT EXISTS embeddings_cosine_ivf
ON {embeddings}(embedding)
STORING (row_key, bucket, name, generation, event_type, model_fingerprint)
OPTIONS (
  index_type = 'IVF',
  distance_type = 'COSINE',
  ivf_options = '{{"num_lists": {num_lists}}}'
)
