resource "google_cloud_scheduler_job" "job" {
  for_each = local.schedules

  name             = "${var.prefix}-${each.key}"
  region           = var.region
  description      = each.value.description
  schedule         = each.value.schedule
  time_zone        = each.value.time_zone
  attempt_deadline = each.value.function == null ? null : "320s"

  dynamic "pubsub_target" {
    for_each = each.value.topic == null ? [] : [each.value]
    content {
      topic_name = google_pubsub_topic.topic[pubsub_target.value.topic].id
      attributes = pubsub_target.value.attributes
      data       = base64encode(jsonencode(pubsub_target.value.body))
    }
  }

  dynamic "http_target" {
    for_each = each.value.function == null ? [] : [each.value]
    content {
      uri         = google_cloudfunctions2_function.fn[http_target.value.function].service_config[0].uri
      http_method = "POST"
      headers     = { "Content-Type" = "application/json" }
      body        = base64encode(jsonencode(http_target.value.body))

      oidc_token {
        service_account_email = google_service_account.scheduler.email
        audience              = google_cloudfunctions2_function.fn[http_target.value.function].service_config[0].uri
      }
    }
  }

  depends_on = [google_project_service.service["cloudscheduler.googleapis.com"]]
}
