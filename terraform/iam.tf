data "google_project" "this" {
  project_id = var.project_id

  depends_on = [google_project_service.resource_manager]
}

# -- service accounts ---------------------------------------------------------

# One identity per function, granted only what its manifest `uses` and
# `secrets` lists need.
resource "google_service_account" "function" {
  for_each = local.functions

  account_id   = "${var.prefix}-${each.key}"
  display_name = "ThreatFlow function ${each.key}"
  description  = each.value.description

  lifecycle {
    precondition {
      condition     = length("${var.prefix}-${each.key}") <= 30
      error_message = "Service account id ${var.prefix}-${each.key} is longer than 30 characters; shorten the prefix or the function name."
    }
  }

  depends_on = [google_project_service.service["iam.googleapis.com"]]
}

resource "google_service_account" "pubsub_pusher" {
  account_id   = "${var.prefix}-pubsub-push"
  display_name = "ThreatFlow Pub/Sub push identity"
  description  = "OIDC identity of push subscriptions; may only invoke their target functions."

  depends_on = [google_project_service.service["iam.googleapis.com"]]
}

resource "google_service_account" "scheduler" {
  account_id   = "${var.prefix}-scheduler"
  display_name = "ThreatFlow Cloud Scheduler identity"
  description  = "OIDC identity of HTTP scheduler jobs; may only invoke their target functions."

  depends_on = [google_project_service.service["iam.googleapis.com"]]
}

resource "google_service_account" "build" {
  account_id   = "${var.prefix}-build"
  display_name = "ThreatFlow function build identity"
  description  = "Builds function bundles into images (instead of the default compute service account)."

  depends_on = [google_project_service.service["iam.googleapis.com"]]
}

# -- function identities -------------------------------------------------------

resource "google_project_iam_member" "function" {
  for_each = local.function_project_roles

  project = var.project_id
  role    = each.value.role
  member  = google_service_account.function[each.value.function].member

  depends_on = [google_project_service.resource_manager]
}

resource "google_pubsub_topic_iam_member" "function_publisher" {
  for_each = local.function_topic_publishers

  topic  = google_pubsub_topic.topic[each.value.topic].id
  role   = "roles/pubsub.publisher"
  member = google_service_account.function[each.value.function].member
}

resource "google_storage_bucket_iam_member" "function" {
  for_each = local.function_bucket_roles

  bucket = google_storage_bucket.bucket[each.value.bucket].name
  role   = each.value.role
  member = google_service_account.function[each.value.function].member
}

resource "google_secret_manager_secret_iam_member" "function_accessor" {
  for_each = local.function_secrets

  secret_id = google_secret_manager_secret.secret[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.value.function].member
}

# Intel API keys are read through the Secret Manager API at run time (not
# mounted), so the enrichment functions may access them.
resource "google_secret_manager_secret_iam_member" "source_key_accessor" {
  for_each = local.function_source_secrets

  secret_id = google_secret_manager_secret.secret[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.value.function].member
}

resource "google_secret_manager_secret_iam_member" "redis_auth_accessor" {
  for_each = local.redis_functions

  secret_id = google_secret_manager_secret.redis_auth.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.key].member
}

# -- push delivery and dead letters -------------------------------------------

resource "google_cloud_run_v2_service_iam_member" "pusher_invoker" {
  for_each = toset([for sub in values(local.push_subscriptions) : sub.push_to])

  name     = google_cloudfunctions2_function.fn[each.key].name
  location = google_cloudfunctions2_function.fn[each.key].location
  role     = "roles/run.invoker"
  member   = google_service_account.pubsub_pusher.member
}

# The Pub/Sub service agent mints the push OIDC tokens.
resource "google_service_account_iam_member" "pubsub_agent_token_creator" {
  service_account_id = google_service_account.pubsub_pusher.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent

  # The service agent is created when the Pub/Sub API is enabled.
  depends_on = [google_project_service.service["pubsub.googleapis.com"]]
}

# Dead-lettering is done by the Pub/Sub service agent: it must publish to the
# dead-letter topic and acknowledge on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.dead_letter_topics

  topic  = google_pubsub_topic.topic[each.key].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.dead_letter_subscriptions

  subscription = google_pubsub_subscription.subscription[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# -- scheduler -----------------------------------------------------------------

resource "google_cloud_run_v2_service_iam_member" "scheduler_invoker" {
  for_each = local.scheduled_functions

  name     = google_cloudfunctions2_function.fn[each.key].name
  location = google_cloudfunctions2_function.fn[each.key].location
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

# -- build ---------------------------------------------------------------------

# The build identity writes logs, pushes to the functions repository and reads
# bundles: the documented minimum instead of the broad cloudbuild.builds.builder.
resource "google_project_iam_member" "build" {
  for_each = toset(["roles/logging.logWriter"])

  project = var.project_id
  role    = each.key
  member  = google_service_account.build.member

  depends_on = [google_project_service.resource_manager]
}

# Cloud Functions stages the source in its own gcf-v2-sources-* bucket, which
# the build then reads; the condition keeps the data buckets out of reach.
resource "google_project_iam_member" "build_staged_sources_reader" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.build.member

  condition {
    title      = "gcf-v2-sources-only"
    expression = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-\")"
  }

  depends_on = [google_project_service.resource_manager]
}

resource "google_artifact_registry_repository_iam_member" "build_writer" {
  repository = google_artifact_registry_repository.functions.name
  location   = google_artifact_registry_repository.functions.location
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.build.member
}

resource "google_storage_bucket_iam_member" "build_bundles_reader" {
  bucket = google_storage_bucket.bundles.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

# -- audit ---------------------------------------------------------------------

# Object reads and writes are recorded by Data Access audit logs, Google's
# recommended replacement for bucket usage logs.
resource "google_project_iam_audit_config" "storage" {
  project = var.project_id
  service = "storage.googleapis.com"

  audit_log_config {
    log_type = "DATA_READ"
  }
  audit_log_config {
    log_type = "DATA_WRITE"
  }

  depends_on = [google_project_service.resource_manager]
}
