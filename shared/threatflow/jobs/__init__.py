"""Maintenance jobs: run by the maintenance function when Cloud Scheduler (or
an admin) publishes {job: NAME} to the maintenance topic."""
