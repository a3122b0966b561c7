# Skeleton, completed by a later issue: one VPC, the Serverless VPC Access
# connector the functions egress through, and the private services peering that
# gives Cloud SQL and Memorystore private IPs. Nothing here has a public IP.

resource "google_compute_network" "vpc" {
  name                    = "${var.prefix}-vpc"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"

  depends_on = [google_project_service.service["compute.googleapis.com"]]
}

resource "google_compute_subnetwork" "main" {
  name                     = "${var.prefix}-${var.region}"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = var.network.subnet_cidr
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_vpc_access_connector" "main" {
  name          = "${var.prefix}-connector"
  region        = var.region
  network       = google_compute_network.vpc.name
  ip_cidr_range = var.network.connector_cidr
  machine_type  = var.network.connector_machine_type
  min_instances = var.network.connector_min_instances
  max_instances = var.network.connector_max_instances

  depends_on = [google_project_service.service["vpcaccess.googleapis.com"]]
}

resource "google_compute_global_address" "private_services" {
  name          = "${var.prefix}-private-services"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = var.network.private_service_prefix_length
  network       = google_compute_network.vpc.id
}

resource "google_service_networking_connection" "private_services" {
  network                 = google_compute_network.vpc.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_services.name]

  depends_on = [google_project_service.service["servicenetworking.googleapis.com"]]
}

# Nothing in this VPC serves ingress: deny it explicitly, logged, instead of
# relying on the implied rule.
resource "google_compute_firewall" "deny_all_ingress" {
  name      = "${var.prefix}-deny-all-ingress"
  network   = google_compute_network.vpc.name
  direction = "INGRESS"
  priority  = 65534

  source_ranges = ["0.0.0.0/0"]

  deny {
    protocol = "all"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}
