# Topic-triggered functions are deployed without an event_trigger (plain
# HTTP-served Cloud Run) and reached by the explicit push subscriptions below.
# This is deliberate: an Eventarc trigger creates its own subscription that we
# cannot give a filter, a dead-letter topic or a retry policy; declaring the
# subscription ourselves makes all three come from the manifest.

resource "google_pubsub_topic" "topic" {
  for_each = local.topics

  name                       = each.key
  message_retention_duration = each.value.message_retention

  depends_on = [google_project_service.service["pubsub.googleapis.com"]]
}

resource "google_pubsub_subscription" "subscription" {
  for_each = local.subscriptions

  name                       = each.key
  topic                      = google_pubsub_topic.topic[each.value.topic].id
  filter                     = each.value.filter
  ack_deadline_seconds       = each.value.ack_deadline_seconds
  message_retention_duration = each.value.message_retention

  retry_policy {
    minimum_backoff = "${each.value.retry.minimum_backoff_seconds}s"
    maximum_backoff = "${each.value.retry.maximum_backoff_seconds}s"
  }

  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter_topic == null ? [] : [each.value]
    content {
      dead_letter_topic     = google_pubsub_topic.topic[dead_letter_policy.value.dead_letter_topic].id
      max_delivery_attempts = dead_letter_policy.value.max_delivery_attempts
    }
  }

  dynamic "push_config" {
    for_each = each.value.push_to == null ? [] : [each.value.push_to]
    content {
      push_endpoint = google_cloudfunctions2_function.fn[push_config.value].service_config[0].uri

      oidc_token {
        service_account_email = google_service_account.pubsub_pusher.email
        # The function checks this audience and the service account (PUSH_AUTH_* in locals.tf).
        audience = "threatflow-push/${push_config.value}"
      }
    }
  }

  # A subscription that nobody pulls or pushes to must not expire silently.
  expiration_policy {
    ttl = ""
  }
}
