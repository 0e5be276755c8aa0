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
