# The Google APIs the resources in this folder call, enabled here instead of assumed to
# be on. Each resource that calls an API depends on its entry, directly or through a
# resource it references (tests/unit/test_terraform.py checks both for every resource
# type used). Never disabled by a destroy: other workloads in the project may use them,
# and disabling an API can delete what it serves.
#
# Enabling needs the Service Usage API itself, which Terraform cannot enable: it is on
# in every new project (`gcloud services enable serviceusage.googleapis.com` otherwise).
# Eventarc is not listed: no function has an event_trigger (pubsub.tf says why).
resource "google_project_service" "service" {
  for_each = toset([
    "artifactregistry.googleapis.com",  # the functions' image repository; Cloud Build pushes to it
    "cloudbuild.googleapis.com",        # gen2 functions are built from their bundles by Cloud Build
    "cloudfunctions.googleapis.com",    # google_cloudfunctions2_function
    "cloudscheduler.googleapis.com",    # google_cloud_scheduler_job
    "compute.googleapis.com",           # the VPC, subnetwork, firewall and private services range
    "firestore.googleapis.com",         # the (default) database and its indexes
    "iam.googleapis.com",               # service accounts and their IAM
    "logging.googleapis.com",           # build and function logs (the build identity's logWriter)
    "pubsub.googleapis.com",            # topics, subscriptions and their IAM
    "redis.googleapis.com",             # Memorystore
    "run.googleapis.com",               # gen2 functions run as Cloud Run services; their invoker IAM
    "secretmanager.googleapis.com",     # secrets, the Redis AUTH version, accessor IAM
    "servicenetworking.googleapis.com", # the private services peering of Cloud SQL and Memorystore
    "sqladmin.googleapis.com",          # Cloud SQL, and the Cloud SQL Python Connector the functions use
    "storage.googleapis.com",           # buckets and their IAM
    "vpcaccess.googleapis.com",         # the Serverless VPC Access connector
  ])

  project            = var.project_id
  service            = each.key
  disable_on_destroy = false
}

# Resource Manager apart: project IAM bindings, the audit config and the google_project data source (iam.tf)
# call it. Terraform reads a data source during apply, its attributes unknown in the plan, whenever a resource
# it depends on has changes pending, whichever instance: waiting for the for_each above, adding any API left
# the project number unknown and replaced every IAM grant to the Pub/Sub service agent (its address holds it).
resource "google_project_service" "resource_manager" {
  project            = var.project_id
  service            = "cloudresourcemanager.googleapis.com"
  disable_on_destroy = false
}

moved {
  from = google_project_service.service["cloudresourcemanager.googleapis.com"]
  to   = google_project_service.resource_manager
}
