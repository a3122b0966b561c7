# Every transformation of the topology manifest happens here; the resource files
# only iterate these maps. Keys are the manifest's stable names, so adding an
# entry to functions/topology.yaml adds resources and never renames others.
#
# Topics, subscriptions and secrets keep their manifest names because the shared
# package addresses them by those names in GOOGLE_CLOUD_PROJECT (one deployment
# per project). `var.prefix` names what lives in a global or shared namespace:
# buckets, service accounts, functions, network, database and cache.

locals {
  manifest = yamldecode(file("${path.module}/../functions/topology.yaml"))
  defaults = local.manifest.defaults

  # Pub/Sub's own default when a subscription sets no retry policy would be
  # "retry immediately"; the manifest may omit it, Terraform never does.
  default_retry = { minimum_backoff_seconds = 10, maximum_backoff_seconds = 600 }

  # Intel sources; a function with per_source = true is one code path deployed
  # once per enabled source as enrich-<source> (underscores become hyphens).
  sources         = { for name, src in local.manifest.sources : name => src if try(src.enabled, true) }
  source_function = { for name, src in local.sources : name => "enrich-${replace(name, "_", "-")}" }
  source_secrets  = toset([for name, src in local.sources : src.secret if try(src.secret, null) != null])
  per_source_templates = {
    for name, fn in local.manifest.functions : name => fn if try(fn.per_source, false)
  }
  # Every deployed function: the manifest's own (bundle = its folder) plus one
  # per source for each per_source template (bundle = the template's folder).
  deployed_functions = merge(
    { for name, fn in local.manifest.functions : name => { bundle = name, source = null, spec = fn } if !try(fn.per_source, false) },
    merge([
      for template_name, t in local.per_source_templates : {
        for source, function_name in local.source_function : function_name => { bundle = template_name, source = source, spec = t }
      }
    ]...),
  )

  functions = {
    for name, d in local.deployed_functions : name => {
      bundle          = d.bundle
      description     = d.source == null ? d.spec.description : "${d.spec.description} (${d.source})"
      entry_point     = d.spec.entry_point
      env             = merge(try(d.spec.env, {}), { for source in compact([d.source]) : "ENRICH_SOURCE" => source })
      max_instances   = try(d.spec.max_instances, local.defaults.max_instances)
      memory          = try(d.spec.memory, local.defaults.memory)
      min_instances   = try(d.spec.min_instances, local.defaults.min_instances)
      runtime         = local.defaults.runtime
      secrets         = toset(try(d.spec.secrets, []))
      timeout_seconds = try(d.spec.timeout_seconds, local.defaults.timeout_seconds)
      trigger         = d.spec.trigger.type
      uses            = try(d.spec.uses, [])
    }
  }

  topics = merge(
    {
      for name, topic in local.manifest.topics : name => {
        message_retention = try("${topic.message_retention_seconds}s", null)
      }
    },
    { for source, fn in local.source_function : "${fn}-dead-letter" => { message_retention = null } },
  )

  # Per-source task subscriptions: filtered on the source attribute, each with its own dead letter.
  source_subscriptions = merge(
    {
      for source, fn in local.source_function : "${fn}-push" => {
        ack_deadline_seconds      = 120
        dead_letter_topic         = "${fn}-dead-letter"
        filter                    = "attributes.source = \"${source}\""
        max_delivery_attempts     = try(local.sources[source].max_delivery_attempts, 5)
        message_retention_seconds = null
        push_to                   = fn
        retry                     = { minimum_backoff_seconds = 1, maximum_backoff_seconds = 60 }
        topic                     = one([for name, t in local.per_source_templates : t.trigger.topic])
      }
    },
    {
      for source, fn in local.source_function : "${fn}-dead-letter-hold" => {
        ack_deadline_seconds      = 60
        message_retention_seconds = 604800
        topic                     = "${fn}-dead-letter"
      }
    },
  )

  subscriptions = {
    for name, sub in merge(local.manifest.subscriptions, local.source_subscriptions) : name => {
      ack_deadline_seconds  = try(sub.ack_deadline_seconds, 10)
      dead_letter_topic     = try(sub.dead_letter_topic, null)
      filter                = try(sub.filter, null)
      max_delivery_attempts = try(sub.max_delivery_attempts, null)
      message_retention     = try(sub.message_retention_seconds, null) == null ? null : "${sub.message_retention_seconds}s"
      push_to               = try(sub.push_to, null)
      retry                 = merge(local.default_retry, try(sub.retry, {}))
      topic                 = sub.topic
    }
  }
  dead_letter_subscriptions = { for name, sub in local.subscriptions : name => sub if sub.dead_letter_topic != null }
  dead_letter_topics        = toset([for sub in values(local.dead_letter_subscriptions) : sub.dead_letter_topic])
  push_subscriptions        = { for name, sub in local.subscriptions : name => sub if sub.push_to != null }

  schedules = {
    for name, job in local.manifest.schedules : name => {
      attributes  = try(job.attributes, {})
      body        = try(job.body, {})
      description = job.description
      function    = try(job.function, null)
      schedule    = job.schedule
      time_zone   = try(job.time_zone, "Etc/UTC")
      topic       = try(job.topic, null)
    }
  }
  scheduled_functions = toset([for job in values(local.schedules) : job.function if job.function != null])

  secrets = { for name, secret in local.manifest.secrets : name => secret }

  buckets = {
    for key, bucket in local.manifest.buckets : key => {
      delete_after_days = try(bucket.lifecycle_delete_after_days, null)
      env               = bucket.env
      name              = "${var.prefix}-${key}"
      versioning        = try(bucket.versioning, false)
    }
  }

  # Least privilege, derived from each function's `uses` list.
  uses_project_roles = {
    firestore = ["roles/datastore.user"]
    postgres  = ["roles/cloudsql.client"]
    # list_topics is the /ready probe; read-only metadata.
    pubsub = ["roles/pubsub.viewer"]
  }
  function_project_roles = {
    for pair in flatten([
      for name, fn in local.functions : [
        for role in flatten([for use in fn.uses : lookup(local.uses_project_roles, use, [])]) : { function = name, role = role }
      ]
    ]) : "${pair.function}/${pair.role}" => pair
  }
  function_topic_publishers = {
    # Dead-letter topics are published to by the Pub/Sub service agent only.
    for pair in setproduct(
      [for name, fn in local.functions : name if contains(fn.uses, "pubsub")],
      [for name in keys(local.topics) : name if !contains(local.dead_letter_topics, name)],
    ) :
    "${pair[0]}/${pair[1]}" => { function = pair[0], topic = pair[1] }
  }
  # objectAdmin for the data; legacyBucketReader for the /ready probe (buckets.get).
  function_bucket_roles = {
    for triple in setproduct(
      [for name, fn in local.functions : name if contains(fn.uses, "storage")],
      keys(local.buckets),
      ["roles/storage.objectAdmin", "roles/storage.legacyBucketReader"],
    ) : "${triple[0]}/${triple[1]}/${triple[2]}" => { function = triple[0], bucket = triple[1], role = triple[2] }
  }
  function_secrets = {
    for pair in flatten([for name, fn in local.functions : [for secret in fn.secrets : { function = name, secret = secret }]]) :
    "${pair.function}/${pair.secret}" => pair
  }
  # Intel keys are read at run time (not mounted), so a new version needs no redeploy.
  # detect reads them too: GET /api/v1/detect/intel/{ip} looks the IP up through the sources.
  function_source_secrets = {
    for pair in setproduct([for name, fn in local.functions : name if startswith(name, "enrich") || name == "detect"], tolist(local.source_secrets)) :
    "${pair[0]}/${pair[1]}" => { function = pair[0], secret = pair[1] }
  }
  redis_functions = toset([for name, fn in local.functions : name if contains(fn.uses, "redis")])

  bucket_env = { for key, bucket in local.buckets : bucket.env => bucket.name }
  function_env = {
    for name, fn in local.functions : name => merge(
      fn.env,
      local.bucket_env,
      {
        CLOUD_SQL_INSTANCE   = google_sql_database_instance.main.connection_name
        DB_NAME              = google_sql_database.app.name
        DB_USER              = var.database.user
        GOOGLE_CLOUD_PROJECT = var.project_id
        ENRICH_SOURCES_JSON  = jsonencode(local.manifest.sources)
        # Push endpoints accept only Pub/Sub's OIDC token for this audience and service account (pubsub.tf).
        PUSH_AUTH_AUDIENCE        = "threatflow-push/${name}"
        PUSH_AUTH_SERVICE_ACCOUNT = google_service_account.pubsub_pusher.email
        REDIS_CA_CERT             = google_redis_instance.cache.server_ca_certs[0].cert
        REDIS_URL                 = "rediss://${google_redis_instance.cache.host}:${google_redis_instance.cache.port}/0"
        THREATFLOW_ENV            = "cloud"
        THREATFLOW_USES           = join(",", fn.uses)
        TRUSTED_PROXY_HOPS        = tostring(var.trusted_proxy_hops)
      },
    )
  }
  function_secret_env = {
    for name, fn in local.functions : name => merge(
      { for secret in fn.secrets : local.secrets[secret].env => google_secret_manager_secret.secret[secret].secret_id },
      contains(fn.uses, "redis") ? { REDIS_AUTH = google_secret_manager_secret.redis_auth.secret_id } : {},
    )
  }

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}
