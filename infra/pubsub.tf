# Storage notifications -> topic -> the job's subscription. A notification that fails
# max_delivery_attempts times (a poison message) moves to the dead-letter topic, where a
# subscription keeps it for inspection instead of blocking or losing it.

resource "google_pubsub_topic" "notifications" {
  name       = "gcs-notifications"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  name       = "gcs-notifications-dead-letter"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "embed" {
  name  = "embed"
  topic = google_pubsub_topic.notifications.id

  # Dataflow extends the deadline while it works; this bounds a stuck worker's hold.
  ack_deadline_seconds       = 120
  message_retention_duration = "604800s" # 7 days: a drained or stopped job catches up

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  expiration_policy {
    ttl = "" # never expires while the job is stopped
  }
}

resource "google_pubsub_subscription" "dead_letter" {
  name                       = "gcs-notifications-dead-letter"
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# Pub/Sub's own service agent moves poison messages: it must publish to the dead-letter
# topic and acknowledge on the source subscription.
locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_topic_iam_member" "agent_publishes_dead_letters" {
  topic  = google_pubsub_topic.dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "agent_acks_dead_letters" {
  subscription = google_pubsub_subscription.embed.id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
