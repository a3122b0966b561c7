# Skeleton, completed by a later issue. Reached over private services access
# only, with AUTH and in-transit encryption (TLS on port 6378): functions get
# REDIS_URL (rediss://), REDIS_CA_CERT (the server CA, public) and REDIS_AUTH
# (from Secret Manager).

resource "google_redis_instance" "cache" {
  name                    = "${var.prefix}-cache"
  region                  = var.region
  tier                    = var.redis.tier
  memory_size_gb          = var.redis.memory_size_gb
  redis_version           = var.redis.redis_version
  authorized_network      = google_compute_network.vpc.id
  connect_mode            = "PRIVATE_SERVICE_ACCESS"
  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"

  depends_on = [google_service_networking_connection.private_services, google_project_service.service["redis.googleapis.com"]]
}
