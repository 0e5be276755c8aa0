# The images bucket exists already; it notifies the topic for objects under images_prefix
# only. Vectors go to a bucket of their own, so the job's writes never notify it.

# Cloud Storage publishes a bucket's notifications as the service agent of the project
# that holds the bucket, which may not be the project that runs the job.
data "google_storage_project_service_account" "gcs" {
  project    = coalesce(var.images_project, var.project_id)
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "gcs_publishes_notifications" {
  topic  = google_pubsub_topic.notifications.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

# Cloud Storage refuses to create a notification while its service agent cannot publish
# to the topic, and an IAM grant takes typically 2 minutes, potentially 7 or more, to
# take effect (https://cloud.google.com/iam/docs/access-change-propagation). The wait
# covers the usual case; should the API still refuse, `terraform apply` again resumes.
# A new grant (another service agent or topic) waits again.
resource "time_sleep" "gcs_publisher_propagates" {
  create_duration = "120s"

  triggers = {
    member = google_pubsub_topic_iam_member.gcs_publishes_notifications.member
    topic  = google_pubsub_topic_iam_member.gcs_publishes_notifications.topic
  }
}

# No project argument: bucket names are global, and the notification lives on the bucket.
resource "google_storage_notification" "images" {
  bucket             = var.images_bucket
  topic              = google_pubsub_topic.notifications.id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE", "OBJECT_DELETE", "OBJECT_ARCHIVE"]
  object_name_prefix = var.images_prefix
  depends_on         = [time_sleep.gcs_publisher_propagates]
}

# Soft delete stays at the bucket's default (7 days unless an organization policy says
# otherwise): vectors are data, written once and never overwritten, so it costs storage
# only after a deletion, which is when a restore is wanted.
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

  # Jobs write and delete temp files all day, and the tmp/ rule below deletes the rest:
  # with soft delete each deleted byte stays billed for its window, and Beam warns at
  # every launch. What else lives here (templates, weights, models) can be rebuilt.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

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
