# Identities with the least privilege each needs: every grant is on the one resource it
# concerns, except the two roles that only exist at project level.

resource "google_service_account" "embedder" {
  account_id   = "embedder"
  display_name = "Image embedding job (Dataflow workers and Flex Template launcher)"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "backfill" {
  account_id   = "embed-backfill"
  display_name = "embed-backfill: publishes notifications for existing objects"
  depends_on   = [google_project_service.apis]
}

locals {
  embedder = "serviceAccount:${google_service_account.embedder.email}"
  backfill = "serviceAccount:${google_service_account.backfill.email}"
}

# --- The job -------------------------------------------------------------------------
resource "google_project_iam_member" "embedder_dataflow_worker" {
  project    = var.project_id
  role       = "roles/dataflow.worker"
  member     = local.embedder
  depends_on = [google_project_service.apis]
}

# --catch_up always on Dataflow runs a BigQuery query job (what the tables already hold);
# a job is a project-level resource, so this role exists only at project level.
resource "google_project_iam_member" "embedder_runs_queries" {
  project    = var.project_id
  role       = "roles/bigquery.jobUser"
  member     = local.embedder
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription_iam_member" "embedder_subscriber" {
  subscription = google_pubsub_subscription.embed.id
  role         = "roles/pubsub.subscriber"
  member       = local.embedder
}

# Dataflow reads the subscription's configuration (ack deadline, backlog) before pulling.
resource "google_pubsub_subscription_iam_member" "embedder_subscription_viewer" {
  subscription = google_pubsub_subscription.embed.id
  role         = "roles/pubsub.viewer"
  member       = local.embedder
}

resource "google_storage_bucket_iam_member" "embedder_reads_images" {
  bucket = var.images_bucket
  role   = "roles/storage.objectViewer"
  member = local.embedder
}

# objectCreator is enough: vectors are written create-only (ifGenerationMatch=0) and an
# existing .npy of the same object generation and weights counts as written.
resource "google_storage_bucket_iam_member" "embedder_writes_vectors" {
  bucket = google_storage_bucket.vectors.name
  role   = "roles/storage.objectCreator"
  member = local.embedder
}

# The weights under models/ (and their watch), the template spec and staged files: read.
resource "google_storage_bucket_iam_member" "embedder_reads_dataflow_files" {
  bucket = google_storage_bucket.dataflow.name
  role   = "roles/storage.objectViewer"
  member = local.embedder
}

# Written only under the prefixes the job owns: temp and staging files, and the model
# cache (streaming/main.py MODEL_CACHE_PREFIX; a stale build claim is deleted there).
# The weights under models/ stay read-only: a worker cannot replace what the weights
# watch would then load everywhere.
resource "google_storage_bucket_iam_member" "embedder_writes_dataflow_files" {
  bucket = google_storage_bucket.dataflow.name
  role   = "roles/storage.objectAdmin"
  member = local.embedder
  condition {
    title       = "job-prefixes"
    description = "tmp/, staging/ and the model cache image-embeddings/ only"
    expression  = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.dataflow.name}/objects/tmp/\") || resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.dataflow.name}/objects/staging/\") || resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.dataflow.name}/objects/image-embeddings/\")"
  }
}

# Beam's launcher reads the staging bucket's metadata (storage.buckets.get) before it
# stages the job file and the pipeline, and checks its soft-delete policy; objectAdmin
# has no bucket permission. legacyBucketReader: buckets.get and objects.list only.
resource "google_storage_bucket_iam_member" "embedder_dataflow_bucket" {
  bucket = google_storage_bucket.dataflow.name
  role   = "roles/storage.legacyBucketReader"
  member = local.embedder
}

# Rows by either write method, creating a missing table, and the catch-up's reads
# (queries: embedder_runs_queries). Not roles/bigquery.dataEditor: that one can also
# delete the tables and change their schema.
resource "google_project_iam_custom_role" "embeddings_writer" {
  role_id     = "embeddingsWriter"
  title       = "Image embeddings writer"
  description = "Appends rows to the embeddings and dead-letter tables, creates a missing one, reads them."
  permissions = [
    "bigquery.datasets.get",
    "bigquery.tables.create",
    "bigquery.tables.get",
    "bigquery.tables.getData",
    "bigquery.tables.updateData",
  ]
  depends_on = [google_project_service.apis]
}

resource "google_bigquery_dataset_iam_member" "embedder_writes_rows" {
  dataset_id = google_bigquery_dataset.images.dataset_id
  role       = google_project_iam_custom_role.embeddings_writer.id
  member     = local.embedder
}

# `--update` through the Flex Template: Beam, in the launcher (which runs as this
# account), looks the running job up by name (dataflow.jobs.list).
resource "google_project_iam_member" "embedder_finds_the_job_to_update" {
  project    = var.project_id
  role       = "roles/dataflow.viewer"
  member     = local.embedder
  depends_on = [google_project_service.apis]
}

resource "google_artifact_registry_repository_iam_member" "embedder_pulls_image" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = local.embedder
}

# --- The backfill --------------------------------------------------------------------
resource "google_storage_bucket_iam_member" "backfill_lists_images" {
  bucket = var.images_bucket
  role   = "roles/storage.objectViewer"
  member = local.backfill
}

resource "google_pubsub_topic_iam_member" "backfill_publishes" {
  topic  = google_pubsub_topic.notifications.id
  role   = "roles/pubsub.publisher"
  member = local.backfill
}

# --skip-existing queries the embeddings table.
resource "google_bigquery_dataset_iam_member" "backfill_reads_rows" {
  dataset_id = google_bigquery_dataset.images.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = local.backfill
}

resource "google_project_iam_member" "backfill_runs_queries" {
  project    = var.project_id
  role       = "roles/bigquery.jobUser"
  member     = local.backfill
  depends_on = [google_project_service.apis]
}

# Who runs the backfill does so as embed-backfill: a deployer impersonates it
# (`gcloud auth application-default login --impersonate-service-account`, which needs
# TokenCreator) or runs it on a VM or Cloud Run job attached to it (serviceAccountUser).
resource "google_service_account_iam_member" "deployers_impersonate_backfill" {
  for_each           = toset(var.deployers)
  service_account_id = google_service_account.backfill.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = each.value
}

resource "google_service_account_iam_member" "deployers_act_as_backfill" {
  for_each           = toset(var.deployers)
  service_account_id = google_service_account.backfill.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}

# --- People --------------------------------------------------------------------------
resource "google_project_iam_member" "deployers_run_dataflow" {
  for_each   = toset(var.deployers)
  project    = var.project_id
  role       = "roles/dataflow.developer"
  member     = each.value
  depends_on = [google_project_service.apis]
}

resource "google_service_account_iam_member" "deployers_act_as_embedder" {
  for_each           = toset(var.deployers)
  service_account_id = google_service_account.embedder.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}

resource "google_artifact_registry_repository_iam_member" "deployers_push_image" {
  for_each   = toset(var.deployers)
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = each.value
}

resource "google_storage_bucket_iam_member" "deployers_write_templates" {
  for_each = toset(var.deployers)
  bucket   = google_storage_bucket.dataflow.name
  role     = "roles/storage.objectAdmin"
  member   = each.value
}

# A direct launch stages through Beam as the deployer: see embedder_dataflow_bucket.
resource "google_storage_bucket_iam_member" "deployers_dataflow_bucket" {
  for_each = toset(var.deployers)
  bucket   = google_storage_bucket.dataflow.name
  role     = "roles/storage.legacyBucketReader"
  member   = each.value
}

# The smoke tests of docs/dataflow.md: one upload under the notified prefix, a query of
# the rows, and the documented schema upgrades (ALTER TABLE ... ADD COLUMN).
resource "google_storage_bucket_iam_member" "deployers_upload_a_test_image" {
  for_each   = toset(var.deployers)
  bucket     = var.images_bucket
  role       = "roles/storage.objectCreator"
  member     = each.value
  depends_on = [google_project_service.apis]
  condition {
    title       = "images-prefix"
    description = "New objects under the notified prefix only"
    expression  = "resource.name.startsWith(\"projects/_/buckets/${var.images_bucket}/objects/${var.images_prefix}\")"
  }
}

# A direct launch checks what it names before it submits (the subscription, the vectors
# bucket): read-only, and what an operator looks at when the job falls behind.
resource "google_pubsub_subscription_iam_member" "deployers_view_subscription" {
  for_each     = toset(var.deployers)
  subscription = google_pubsub_subscription.embed.id
  role         = "roles/pubsub.viewer"
  member       = each.value
}

resource "google_storage_bucket_iam_member" "deployers_read_vectors" {
  for_each = toset(var.deployers)
  bucket   = google_storage_bucket.vectors.name
  role     = "roles/storage.objectViewer"
  member   = each.value
}

resource "google_bigquery_dataset_iam_member" "deployers_read_rows" {
  for_each   = toset(var.deployers)
  dataset_id = google_bigquery_dataset.images.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = each.value
}

resource "google_project_iam_member" "deployers_run_queries" {
  for_each   = toset(var.deployers)
  project    = var.project_id
  role       = "roles/bigquery.jobUser"
  member     = each.value
  depends_on = [google_project_service.apis]
}

resource "google_project_iam_custom_role" "schema_upgrader" {
  role_id     = "embeddingsSchemaUpgrader"
  title       = "Image embeddings schema upgrader"
  description = "ALTER TABLE ... ADD COLUMN on the job's tables; no row access, no delete."
  permissions = ["bigquery.tables.get", "bigquery.tables.update"]
  depends_on  = [google_project_service.apis]
}

resource "google_bigquery_dataset_iam_member" "deployers_upgrade_schemas" {
  for_each   = toset(var.deployers)
  dataset_id = google_bigquery_dataset.images.dataset_id
  role       = google_project_iam_custom_role.schema_upgrader.id
  member     = each.value
}

resource "google_bigquery_dataset_iam_member" "analysts_read_rows" {
  for_each   = toset(var.analysts)
  dataset_id = google_bigquery_dataset.images.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = each.value
}

resource "google_project_iam_member" "analysts_run_queries" {
  for_each   = toset(var.analysts)
  project    = var.project_id
  role       = "roles/bigquery.jobUser"
  member     = each.value
  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "analysts_read_vectors" {
  for_each = toset(var.analysts)
  bucket   = google_storage_bucket.vectors.name
  role     = "roles/storage.objectViewer"
  member   = each.value
}
