# Gen2 functions from the manifest. The source is a content-addressed bundle
# (bundles/<name>-<sha256[:12]>.zip from scripts/bundle_functions.py), so any
# code change gives a new object name and therefore a new build and revision.

resource "google_cloudfunctions2_function" "fn" {
  for_each = local.functions

  name        = "${var.prefix}-${each.key}"
  location    = var.region
  description = each.value.description

  build_config {
    runtime           = each.value.runtime
    entry_point       = each.value.entry_point
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = google_storage_bucket.bundles.name
        object = lookup(var.function_bundles, each.value.bundle, "")
      }
    }
  }

  service_config {
    available_memory      = each.value.memory
    timeout_seconds       = each.value.timeout_seconds
    max_instance_count    = each.value.max_instances
    min_instance_count    = each.value.min_instances
    service_account_email = google_service_account.function[each.key].email
    # Topic functions are reached only by their push subscription (Pub/Sub and
    # Cloud Scheduler count as internal traffic).
    # API Gateway reaches its backends from outside the VPC, so HTTP functions
    # accept all ingress and rely on IAM: only the gateway's identity may invoke.
    ingress_settings               = each.value.trigger == "topic" ? "ALLOW_INTERNAL_ONLY" : "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    vpc_connector                  = google_vpc_access_connector.main.id
    vpc_connector_egress_settings  = "PRIVATE_RANGES_ONLY"
    environment_variables          = local.function_env[each.key]

    dynamic "secret_environment_variables" {
      for_each = local.function_secret_env[each.key]
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = contains(keys(var.function_bundles), each.value.bundle)
      error_message = "function_bundles has no bundle ${each.value.bundle} for function ${each.key}; run scripts/bundle_functions.py and pass dist/bundles.auto.tfvars.json."
    }
  }

  # The build identity, secret access and the APIs that build and serve it must exist before the first build and revision.
  depends_on = [
    google_project_iam_member.build,
    google_project_iam_member.build_staged_sources_reader,
    google_artifact_registry_repository_iam_member.build_writer,
    google_storage_bucket_iam_member.build_bundles_reader,
    google_secret_manager_secret_iam_member.function_accessor,
    google_secret_manager_secret_iam_member.source_key_accessor,
    google_secret_manager_secret_iam_member.redis_auth_accessor,
    google_secret_manager_secret_version.redis_auth,
    google_project_service.service["cloudfunctions.googleapis.com"],
    google_project_service.service["run.googleapis.com"],
    google_project_service.service["cloudbuild.googleapis.com"],
    google_project_service.service["logging.googleapis.com"],
  ]
}

# Function images live in our own repository so the build identity can be
# granted writer on it alone, and old images are cleaned up.
resource "google_artifact_registry_repository" "functions" {
  repository_id = "${var.prefix}-functions"
  location      = var.region
  format        = "DOCKER"
  description   = "Images built from the function bundles."

  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 5
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.service["artifactregistry.googleapis.com"]]
}
