variable "project_id" {
  description = "The Google Cloud project that runs the job."
  type        = string
}

variable "region" {
  description = "Region of the Dataflow job, the buckets and the Artifact Registry repository."
  type        = string
  default     = "us-central1"
}

variable "images_bucket" {
  description = "The existing bucket whose new images are embedded."
  type        = string
}

variable "images_prefix" {
  description = "Only objects under this prefix notify the job, so nothing else written to the bucket reaches it."
  type        = string
  default     = "uploads/"

  validation {
    condition     = length(var.images_prefix) > 0
    error_message = "images_prefix must not be empty: every write to the bucket would notify the job."
  }
}

variable "vectors_bucket" {
  description = "Bucket created for the .npy vectors (the job's --output_gcs gs://VECTORS_BUCKET/embeddings/)."
  type        = string
}

variable "dataflow_bucket" {
  description = "Bucket created for Dataflow temp and staging files, Flex Template specs and model weights."
  type        = string
}

variable "dataset_id" {
  description = "BigQuery dataset of the embeddings and dead_letters tables."
  type        = string
  default     = "images"
}

variable "bigquery_location" {
  description = "Location of the BigQuery dataset."
  type        = string
  default     = "US"
}

variable "deployers" {
  description = "Members (user:, group:, serviceAccount:) who build images, launch, update and drain the job, and run embed-backfill as its service account."
  type        = list(string)
  default     = []
}

variable "analysts" {
  description = "Members who query the tables and read the vectors."
  type        = list(string)
  default     = []
}

variable "images_project" {
  description = "Project that holds images_bucket, when it is not project_id (null: project_id). Its Cloud Storage service agent publishes the notifications."
  type        = string
  default     = null
}

# --- Dashboard and alerts (monitoring.tf) ---------------------------------------------
variable "job_name" {
  description = "Name of the Dataflow job (--job_name; docs/dataflow.md launches it as image-embeddings): the dashboard and the alerts select its metrics and logs by it."
  type        = string
  default     = "image-embeddings"
}

variable "alert_notification_channels" {
  description = "Cloud Monitoring notification channels (projects/P/notificationChannels/ID) every alert policy notifies; empty: incidents show in the console only."
  type        = list(string)
  default     = []
}

# The thresholds below are operating choices, not measurements: each default says what
# it trades, and a deployment sets its own in terraform.tfvars.

# Alerts on the job's counters compare each with its value this long ago: several of
# Dataflow's metric reports fit in it, so one late report does not open an incident,
# and an incident still opens within minutes of the fault.
variable "alert_window_minutes" {
  description = "Window of the alerts on the job's counters (dead letters, stalls, latency, BigQuery stalls, catch-up, worker errors)."
  type        = number
  default     = 15
}

# Dataflow acknowledges a notification once its results are checkpointed, so in a healthy
# job the oldest one is young. Half an hour old means the job is stopped, stuck or far
# behind, while the subscription's 7-day retention still leaves days to act.
variable "alert_oldest_unacked_minutes" {
  description = "Age of the subscription's oldest unacknowledged notification above which an incident opens."
  type        = number
  default     = 30
}

# A dead letter of a reason the image explains (not_an_image, too_large) is an upload's
# fault and expected now and then; a run of one reason in a window (permission_denied,
# inference_error, read_error) is a fault of the job or its services. Lower it to hear of
# every dead letter; raise it where users upload many non-images.
variable "alert_dead_letters" {
  description = "Dead letters of one reason within alert_window_minutes above which an incident opens."
  type        = number
  default     = 10
}

# The mean over the window, from the job's notification_to_row_ms distribution: set it to
# what the consumers of the table need; the default flags a job that has fallen minutes
# behind without paging on a short burst.
variable "alert_latency_seconds" {
  description = "Mean notification-to-row latency over alert_window_minutes above which an incident opens."
  type        = number
  default     = 300
}

# The job logs an error line only for what needs an operator (a stall, an abandoned
# catch-up pass, a refused dead letter, weights it could not use), and Dataflow logs a
# failed bundle at error: 0 opens an incident on the first one.
variable "alert_worker_errors" {
  description = "Error lines in the job's worker logs within alert_window_minutes above which an incident opens."
  type        = number
  default     = 0
}
