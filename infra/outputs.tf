# The values the job's launch commands take (docs/dataflow.md).

output "input_subscription" {
  value = google_pubsub_subscription.embed.id
}

output "output_table" {
  value = "${var.project_id}:${google_bigquery_dataset.images.dataset_id}.${google_bigquery_table.embeddings.table_id}"
}

output "dead_letter_table" {
  value = "${var.project_id}:${google_bigquery_dataset.images.dataset_id}.${google_bigquery_table.dead_letters.table_id}"
}

output "output_gcs" {
  value = "gs://${google_storage_bucket.vectors.name}/embeddings/"
}

output "dataflow_bucket" {
  value = google_storage_bucket.dataflow.name
}

output "service_account_email" {
  value = google_service_account.embedder.email
}

output "backfill_service_account_email" {
  value = google_service_account.backfill.email
}

output "image_repository" {
  value = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}
