# The images bucket exists already; it notifies the topic for objects under images_prefix
# only. Vectors go to a bucket of their own, so the job's writes never notify it.

data "google_storage_project_service_account" "gcs" {
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "gcs_publishes_notifications" {
  topic  = google_pubsub_topic.notifications.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "images" {
  bucket             = var.images_bucket
  topic              = google_pubsub_topic.notifications.id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE", "OBJECT_DELETE", "OBJECT_ARCHIVE"]
  object_name_prefix = var.images_prefix
  depends_on         = [google_pubsub_topic_iam_member.gcs_publishes_notifications]
}

resource "google_storage_bucket" "vectors" {
  name                        = var.vectors_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  depends_on                  = [google_project_service.apis]
}

resource "google_storage_bucket" "dataflow" {
  name                        = var.dataflow_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  depends_on                  = [google_project_service.apis]

  lifecycle_rule {
    condition {
      age            = 7
      matches_prefix = ["tmp/"]
    }
    action {
      type = "Delete"
    }
  }
}
