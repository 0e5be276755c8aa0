locals {
  services = [
    "artifactregistry.googleapis.com",
    "bigquery.googleapis.com",
    "bigquerystorage.googleapis.com", # the Storage Write API (rows) and Read API
    "cloudresourcemanager.googleapis.com",
    "compute.googleapis.com",
    "dataflow.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",    # the job's error lines, counted for an alert (monitoring.tf)
    "monitoring.googleapis.com", # the dashboard and alert policies (monitoring.tf)
    "pubsub.googleapis.com",
    "storage.googleapis.com",
  ]
}

resource "google_project_service" "apis" {
  for_each           = toset(local.services)
  service            = each.value
  disable_on_destroy = false
}

# Every other resource depends on these, directly or through a resource that does
# (tests/checks/test_infra.py checks it): nothing is created before its API is enabled.
data "google_project" "this" {
  depends_on = [google_project_service.apis]
}
