# Skeleton, completed by a later issue. PostgreSQL 15 on a private IP only; the
# functions connect through the Cloud SQL Python Connector (cloudsql.client),
# whose ephemeral client certificates satisfy TRUSTED_CLIENT_CERTIFICATE_REQUIRED.
# The application user and its password (secret db-password) are created out
# of band, so the password never enters Terraform state.

resource "google_sql_database_instance" "main" {
  name                = "${var.prefix}-pg"
  region              = var.region
  database_version    = "POSTGRES_15"
  deletion_protection = var.database.deletion_protection

  settings {
    tier              = var.database.tier
    edition           = "ENTERPRISE"
    availability_type = var.database.availability_type
    disk_size         = var.database.disk_size_gb
    disk_autoresize   = true
    user_labels       = merge(var.labels, { app = "threatflow", deployment = var.prefix })

    ip_configuration {
      ipv4_enabled                                  = false
      private_network                               = google_compute_network.vpc.id
      enable_private_path_for_google_cloud_services = true
      ssl_mode                                      = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
    }

    backup_configuration {
      enabled                        = true
      start_time                     = var.database.backup_start_time
      point_in_time_recovery_enabled = true
      transaction_log_retention_days = 7

      backup_retention_settings {
        retained_backups = 14
      }
    }

    insights_config {
      query_insights_enabled  = true
      record_application_tags = false
      record_client_address   = false
    }

    # The CIS PostgreSQL logging flags; statements are logged for DDL only.
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_duration"
      value = "on"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_min_messages"
      value = "warning"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
  }

  depends_on = [google_service_networking_connection.private_services, google_project_service.service["sqladmin.googleapis.com"]]
}

resource "google_sql_database" "app" {
  name     = var.database.name
  instance = google_sql_database_instance.main.name
}
