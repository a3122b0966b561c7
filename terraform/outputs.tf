output "bucket_names" {
  description = "Manifest bucket key to bucket name, plus the bundles bucket."
  value       = merge({ for key, bucket in google_storage_bucket.bucket : key => bucket.name }, { bundles = google_storage_bucket.bundles.name })
}

output "cloud_sql_instance" {
  description = "Connection name (project:region:instance) for CLOUD_SQL_INSTANCE, e.g. for `threatflow db migrate`."
  value       = google_sql_database_instance.main.connection_name
}

output "function_service_accounts" {
  description = "Function name to its service account email."
  value       = { for name, account in google_service_account.function : name => account.email }
}

output "function_uris" {
  description = "Function name to its Cloud Run URI."
  value       = { for name, fn in google_cloudfunctions2_function.fn : name => fn.service_config[0].uri }
}

output "subscription_ids" {
  description = "Subscription name to its full id."
  value       = { for name, sub in google_pubsub_subscription.subscription : name => sub.id }
}

output "topic_ids" {
  description = "Topic name to its full id (projects/<project>/topics/<name>)."
  value       = { for name, topic in google_pubsub_topic.topic : name => topic.id }
}
