# Data buckets from the manifest (<prefix>-<key>) and the function bundles bucket.

resource "google_storage_bucket" "bucket" {
  for_each = local.buckets

  name                        = each.value.name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = each.value.versioning
  }

  dynamic "lifecycle_rule" {
    for_each = each.value.delete_after_days == null ? [] : [each.value.delete_after_days]
    content {
      action {
        type = "Delete"
      }
      condition {
        age = lifecycle_rule.value
      }
    }
  }

  depends_on = [google_project_service.service["storage.googleapis.com"]]
}

# Bundles are content-addressed (never overwritten) and stay until removed by
# hand: a rebuild of an unchanged function reads its old bundle again.
resource "google_storage_bucket" "bundles" {
  name                        = "${var.prefix}-bundles"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  depends_on = [google_project_service.service["storage.googleapis.com"]]
}
