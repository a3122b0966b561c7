variable "database" {
  description = "Cloud SQL PostgreSQL settings. The application user and its password (secret db-password) are created out of band."
  type = object({
    availability_type   = optional(string, "ZONAL")
    backup_start_time   = optional(string, "03:00")
    deletion_protection = optional(bool, true)
    disk_size_gb        = optional(number, 10)
    name                = optional(string, "threatflow")
    tier                = optional(string, "db-custom-1-3840")
    user                = optional(string, "threatflow")
  })
  default  = {}
  nullable = false

  validation {
    condition     = contains(["ZONAL", "REGIONAL"], var.database.availability_type)
    error_message = "database.availability_type must be ZONAL or REGIONAL."
  }
  validation {
    condition     = can(regex("^([01][0-9]|2[0-3]):[0-5][0-9]$", var.database.backup_start_time))
    error_message = "database.backup_start_time must be HH:MM (UTC)."
  }
  validation {
    condition     = var.database.disk_size_gb >= 10
    error_message = "database.disk_size_gb must be at least 10."
  }
  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.database.name)) && can(regex("^[a-z][a-z0-9_]{0,62}$", var.database.user))
    error_message = "database.name and database.user must be lowercase PostgreSQL identifiers."
  }
}

variable "function_bundles" {
  description = "Function name to bundle object in the bundles bucket, e.g. {auth = \"bundles/auth-0123456789ab.zip\"}; written to dist/bundles.auto.tfvars.json by scripts/bundle_functions.py."
  type        = map(string)
  nullable    = false

  validation {
    condition     = alltrue([for name, object in var.function_bundles : can(regex("^bundles/${name}-[0-9a-f]{12}\\.zip$", object))])
    error_message = "Each function_bundles value must be bundles/<function>-<12 hex digits of sha256>.zip, as scripts/bundle_functions.py names them."
  }
}

variable "labels" {
  description = "Extra labels applied to every resource that supports them."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "network" {
  description = "Address ranges of the VPC, the Serverless VPC Access connector and the private services (Cloud SQL, Memorystore) peering."
  type = object({
    connector_cidr                = optional(string, "10.8.0.0/28")
    connector_machine_type        = optional(string, "e2-micro")
    connector_max_instances       = optional(number, 3)
    connector_min_instances       = optional(number, 2)
    private_service_prefix_length = optional(number, 16)
    subnet_cidr                   = optional(string, "10.10.0.0/24")
  })
  default  = {}
  nullable = false

  validation {
    condition     = can(cidrhost(var.network.subnet_cidr, 0)) && can(regex("/28$", var.network.connector_cidr))
    error_message = "network.subnet_cidr must be a CIDR and network.connector_cidr a /28 (the connector requires it)."
  }
  validation {
    condition     = var.network.connector_min_instances >= 2 && var.network.connector_max_instances > var.network.connector_min_instances && var.network.connector_max_instances <= 10
    error_message = "network connector instances: 2 <= min < max <= 10."
  }
  validation {
    condition     = var.network.private_service_prefix_length >= 8 && var.network.private_service_prefix_length <= 24
    error_message = "network.private_service_prefix_length must be between 8 and 24."
  }
}

variable "prefix" {
  description = "Names every resource whose namespace is global or shared: buckets are <prefix>-<key>, service accounts <prefix>-<function>. No random suffixes."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,10}[a-z0-9]$", var.prefix))
    error_message = "prefix must be 3-12 characters of lowercase letters, digits and hyphens, starting with a letter (service account ids cap the length)."
  }
}

variable "project_id" {
  description = "Project that holds the deployment (one deployment per project: topics and secrets keep their manifest names)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a valid Google Cloud project id."
  }
}

variable "redis" {
  description = "Memorystore for Redis settings."
  type = object({
    memory_size_gb = optional(number, 1)
    redis_version  = optional(string, "REDIS_7_2")
    tier           = optional(string, "BASIC")
  })
  default  = {}
  nullable = false

  validation {
    condition     = contains(["BASIC", "STANDARD_HA"], var.redis.tier) && var.redis.memory_size_gb >= 1
    error_message = "redis.tier must be BASIC or STANDARD_HA and redis.memory_size_gb at least 1."
  }
}

variable "region" {
  description = "Region of every regional resource."
  type        = string
  default     = "europe-west1"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must look like europe-west1."
  }
}

variable "trusted_proxy_hops" {
  description = "X-Forwarded-For entries, counted from the right, written by proxies we run (TRUSTED_PROXY_HOPS of every function). Cloud Run's front end writes the connecting address there and is the socket's peer, so 1 when callers reach the functions directly; count each proxy in front of it (API Gateway, a load balancer) that appends its caller's address. 0 keys every per-address limit on the front end's address, shared by all callers."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.trusted_proxy_hops >= 0 && var.trusted_proxy_hops <= 8 && floor(var.trusted_proxy_hops) == var.trusted_proxy_hops
    error_message = "trusted_proxy_hops must be a whole number from 0 to 8."
  }
}
