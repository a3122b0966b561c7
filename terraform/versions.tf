terraform {
  required_version = ">= 1.6"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }

  # Partial configuration: Cloud Build passes the bucket with
  # `terraform init -backend-config=bucket=$_TF_STATE_BUCKET`.
  backend "gcs" {
    prefix = "threatflow"
  }
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = merge(var.labels, { app = "threatflow", deployment = var.prefix })
}
