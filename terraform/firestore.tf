# The Firestore database the functions use (jobs, runs, flags, leases): the project's
# "(default)" database in Native mode, in the region of everything else. Deletion is refused
# and point-in-time recovery is on: job and run state is not recreated from anywhere else.
resource "google_firestore_database" "default" {
  project                           = var.project_id
  name                              = "(default)"
  location_id                       = var.region
  type                              = "FIRESTORE_NATIVE"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"

  depends_on = [google_project_service.service["firestore.googleapis.com"]]
}

# Composite indexes of the Firestore queries that need one; Firestore builds the
# single-field indexes itself. The emulator needs none, so a missing index here
# only shows in the cloud: tests/unit/enrichment/test_overdue_runs.py checks it.
# Keyed by a stable name (the resource address); `fields` in index order, all ascending.
locals {
  firestore_indexes = {
    # enrichment/runs.py overdue_runs: status == "running" AND deadline_at < now, by deadline_at
    # (the close-overdue-enrichment-runs maintenance job).
    enrichment_runs_overdue = { collection = "enrichment_runs", fields = ["status", "deadline_at"] }
    # enrichment/runs.py queued_runs: status == "queued" AND created_at < now - 30 min, by created_at
    # (runs never dispatched, swept by the close-overdue-enrichment-runs maintenance job).
    enrichment_runs_queued = { collection = "enrichment_runs", fields = ["status", "created_at"] }
    # enrichment/runs.py requeued_runs: status == "requeued" AND redispatched_at < now - 30 min, by redispatched_at
    # (runs whose request the same job published again and that are still not started).
    enrichment_runs_requeued = { collection = "enrichment_runs", fields = ["status", "redispatched_at"] }
    # flows/ingest_jobs.py stalled_jobs: state IN ("queued", "running") AND updated_at < now - stall age,
    # by updated_at (the recover-stalled-flow-ingest-jobs maintenance job).
    flow_ingest_jobs_stalled = { collection = "flow_ingest_jobs", fields = ["state", "updated_at"] }
    # flows/ingest_jobs.py unwritten_jobs: state IN ("queued", "running") AND created_at < now - stall age,
    # by created_at (jobs an earlier version queued or ran without `updated_at`, which stalled_jobs cannot see).
    flow_ingest_jobs_unwritten = { collection = "flow_ingest_jobs", fields = ["state", "created_at"] }
    # intel/stalled_imports.py unfinished_jobs: state IN ("queued", "running") AND created_at < now - 1 day, by created_at
    # (async import jobs no delivery ever started, failed by the fail-stalled-import-jobs maintenance job).
    import_jobs_unfinished = { collection = "import_jobs", fields = ["state", "created_at"] }
    # intel/stalled_imports.py unfinished_jobs: state IN ("queued", "running") AND started_at < now - 1 h, by started_at
    # (jobs no delivery has run for an hour, failed by the same job).
    import_jobs_unfinished_started = { collection = "import_jobs", fields = ["state", "started_at"] }
    # jobs/runs.py abandoned_runs: state == "running" AND started_at < now - 1 h, by started_at
    # (runs whose delivery was killed, closed by the purge-runs maintenance job).
    maintenance_runs_abandoned = { collection = "maintenance_runs", fields = ["state", "started_at"] }
  }
}

resource "google_firestore_index" "composite" {
  for_each = local.firestore_indexes

  project    = var.project_id
  database   = "(default)"
  collection = each.value.collection
  depends_on = [google_firestore_database.default]

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value
      order      = "ASCENDING"
    }
  }
}

# flows/upload_markers.py: the markers of POST /api/v1/flows/uploads (one active job per object generation)
# are deleted once their expires_at has passed. TTL deletion is lazy (typically within a day), so the route
# also ignores an expired marker itself. Nothing queries expires_at: its single-field indexes are off
# (`index_config {}`), as Firestore advises for a TTL timestamp.
resource "google_firestore_field" "flow_ingest_active_expiry" {
  project    = var.project_id
  database   = "(default)"
  collection = "flow_ingest_active"
  field      = "expires_at"
  depends_on = [google_firestore_database.default]

  index_config {}
  ttl_config {}
}
