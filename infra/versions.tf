terraform {
  required_version = ">= 1.5"
  required_providers {
    # soft_delete_policy on google_storage_bucket needs 5.22 or later. The range matches
    # the version locked in .terraform.lock.hcl; 7.0 is a major release with breaking
    # changes, taken on purpose with `terraform init -upgrade` and a new lock.
    google = {
      source  = "hashicorp/google"
      version = "~> 6.50"
    }
    # time_sleep: waits for IAM grants to propagate (storage.tf).
    time = {
      source  = "hashicorp/time"
      version = "~> 0.13"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
