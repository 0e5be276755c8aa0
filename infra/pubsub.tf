# Storage notifications -> topic -> the job's subscription. Dataflow reads the
# subscription itself and acknowledges a message once it has persisted it, so Pub/Sub's
# dead-letter topics and retry policies never act on it (Pub/Sub's docs say so): a
# notification that cannot be embedded becomes a row in the job's dead-letter table.

resource "google_pubsub_topic" "notifications" {
  name       = "gcs-notifications"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "embed" {
  name  = "embed"
  topic = google_pubsub_topic.notifications.id

  # Dataflow extends the deadline while it works; this bounds a stuck worker's hold.
  ack_deadline_seconds       = 120
  message_retention_duration = "604800s" # 7 days: a drained or stopped job catches up

  expiration_policy {
    ttl = "" # never expires while the job is stopped
  }
}
