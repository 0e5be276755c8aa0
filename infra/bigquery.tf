# Both tables take their schema from schemas/*.json, the files the job, the backfill and
# the tests read: one definition of every column.

resource "google_bigquery_dataset" "images" {
  dataset_id = var.dataset_id
  location   = var.bigquery_location
  depends_on = [google_project_service.apis]
}

resource "google_bigquery_table" "embeddings" {
  dataset_id          = google_bigquery_dataset.images.dataset_id
  table_id            = "embeddings"
  schema              = jsonencode(jsondecode(file("${path.module}/../schemas/embeddings.json")))
  clustering          = ["bucket", "model_fingerprint", "name"]
  deletion_protection = true

  time_partitioning {
    type  = "DAY"
    field = "processing_time"
  }
}

resource "google_bigquery_table" "dead_letters" {
  dataset_id          = google_bigquery_dataset.images.dataset_id
  table_id            = "dead_letters"
  schema              = jsonencode(jsondecode(file("${path.module}/../schemas/dead_letters.json")))
  clustering          = ["stage", "reason"]
  deletion_protection = true

  time_partitioning {
    type  = "DAY"
    field = "processing_time"
  }
}
