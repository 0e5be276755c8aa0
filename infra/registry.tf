resource "google_artifact_registry_repository" "images" {
  repository_id = "embeddings"
  location      = var.region
  format        = "DOCKER"
  description   = "The job's worker and Flex Template image."
  depends_on    = [google_project_service.apis]
}
