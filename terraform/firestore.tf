# Composite indexes of the Firestore queries that need one; Firestore builds the
# single-field indexes itself. The emulator needs none, so a missing index here
# only shows in the cloud: tests/unit/enrichment/test_overdue_index.py checks it.

# enrichment/runs.py overdue_runs: status == "running" AND deadline_at < now, by deadline_at
# (the close-overdue-enrichment-runs maintenance job).
resource "google_firestore_index" "enrichment_runs_overdue" {
  project    = var.project_id
  database   = "(default)"
  collection = "enrichment_runs"

  fields {
    field_path = "status"
    order      = "ASCENDING"
  }

  fields {
    field_path = "deadline_at"
    order      = "ASCENDING"
  }
}
