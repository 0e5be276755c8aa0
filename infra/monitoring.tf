# What operators watch: a dashboard (dashboard.json) and alert policies on the job's own
# numbers, each saying what to do when it fires (docs/monitoring.md, "Dashboard and
# alerts in infra/"). tests/checks/test_monitoring.py checks every Beam metric named here
# and in dashboard.json against the names the job's code emits.
#
# Where the numbers come from:
# - The job's Beam metrics (namespace `embeddings`, streaming/metrics.py): Dataflow
#   exports each counter as dataflow.googleapis.com/job/user_counter on the dataflow_job
#   resource (label job_name), its name in the metric label metric_name; a distribution
#   becomes four such series, metric_name suffixed _MAX, _MIN, _MEAN and _COUNT. Values
#   are doubles of kind GAUGE, each the counter's total so far
#   (https://cloud.google.com/dataflow/docs/guides/using-cloud-monitoring, "Custom
#   metrics"; https://cloud.google.com/monitoring/api/metrics_gcp_d_h#gcp-dataflow).
# - The subscription: pubsub.googleapis.com/subscription/oldest_unacked_message_age and
#   num_undelivered_messages on the pubsub_subscription resource, label subscription_id
#   (https://cloud.google.com/monitoring/api/metrics_gcp_p_z#gcp-pubsub).
# - The job's error lines: a log-based metric below.
#
# Queries are PromQL (https://cloud.google.com/monitoring/promql/promql-mapping): a
# metric type's first `/` becomes `:`, its other `.` and `/` become `_`. A GAUGE cannot
# take the filter API's ALIGN_DELTA or ALIGN_RATE, and PromQL computes the increase of a
# total directly. A Beam counter has no series before its first increment, so an alert
# counts a series that appeared within the window from zero:
# `total - (total offset W or total * 0)`.

# Error lines of the job's workers: what the job logs for an operator (a stall, an
# abandoned catch-up pass, a refused dead letter) and what Dataflow logs of a failed
# bundle or a worker that cannot start. Worker logs are on the dataflow_step resource.
resource "google_logging_metric" "worker_errors" {
  name        = "dataflow_worker_errors"
  description = "Error lines (severity ERROR or above) in the worker logs of the Dataflow job ${var.job_name}."
  filter      = "resource.type=\"dataflow_step\" AND resource.labels.job_name=\"${var.job_name}\" AND severity>=ERROR"
  depends_on  = [google_project_service.apis]

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
}

resource "google_monitoring_dashboard" "job" {
  dashboard_json = templatefile("${path.module}/dashboard.json", {
    job_name      = var.job_name
    subscription  = google_pubsub_subscription.embed.name
    worker_errors = google_logging_metric.worker_errors.name
  })
  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "oldest_unacked" {
  display_name          = "Image embeddings: notifications waiting too long"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.alert_notification_channels
  depends_on            = [google_project_service.apis]

  conditions {
    display_name = "Oldest unacknowledged notification older than ${var.alert_oldest_unacked_minutes} min"
    condition_prometheus_query_language {
      query = <<-EOT
        max(pubsub_googleapis_com:subscription_oldest_unacked_message_age{monitored_resource="pubsub_subscription", subscription_id="${google_pubsub_subscription.embed.name}"})
        > ${var.alert_oldest_unacked_minutes * 60}
      EOT
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The subscription `${google_pubsub_subscription.embed.name}` holds a notification that
      no job has acknowledged for ${var.alert_oldest_unacked_minutes} minutes: the job
      `${var.job_name}` is stopped, stuck or far behind. Check that the job is running
      (Dataflow console); then the dashboard's images embedded per second and dead letters,
      and the worker logs. Nothing is lost while the notification is retained (7 days).
      See docs/monitoring.md, "Dashboard and alerts in infra/".
    EOT
  }
}

resource "google_monitoring_alert_policy" "stalled" {
  display_name          = "Image embeddings: no image embedded while the backlog grows"
  combiner              = "OR"
  severity              = "CRITICAL"
  notification_channels = var.alert_notification_channels
  depends_on            = [google_project_service.apis]

  conditions {
    display_name = "No images_embedded for ${var.alert_window_minutes} min and more undelivered notifications"
    condition_prometheus_query_language {
      query = <<-EOT
        (
          sum(
            dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="images_embedded"}
            - (
              dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="images_embedded"} offset ${var.alert_window_minutes}m
              or dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="images_embedded"} * 0
            )
          )
          or vector(0)
        ) == 0
        and on ()
        sum(delta(pubsub_googleapis_com:subscription_num_undelivered_messages{monitored_resource="pubsub_subscription", subscription_id="${google_pubsub_subscription.embed.name}"}[${var.alert_window_minutes}m])) > 0
      EOT
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The job `${var.job_name}` wrote no row with a vector in ${var.alert_window_minutes}
      minutes while notifications piled up in `${google_pubsub_subscription.embed.name}`.
      Look at the worker logs (a model that cannot load, a worker that cannot start), the
      BigQuery stall alert, and the job's state in the Dataflow console. Restart or
      update the job once the cause is fixed: the notifications wait in the subscription.
      See docs/monitoring.md, "Dashboard and alerts in infra/".
    EOT
  }
}

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "Image embeddings: dead letters of one reason"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.alert_notification_channels
  depends_on            = [google_project_service.apis]

  conditions {
    display_name = "More than ${var.alert_dead_letters} dead letters of one reason in ${var.alert_window_minutes} min"
    condition_prometheus_query_language {
      query = <<-EOT
        sum by (metric_name) (
          dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name=~"dead_letter[.].+"}
          - (
            dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name=~"dead_letter[.].+"} offset ${var.alert_window_minutes}m
            or dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name=~"dead_letter[.].+"} * 0
          )
        ) > ${var.alert_dead_letters}
      EOT
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The job `${var.job_name}` dead-lettered more than ${var.alert_dead_letters} inputs of
      one reason (the incident's metric_name, `dead_letter.<reason>`) in
      ${var.alert_window_minutes} minutes. `schemas/sql/dead_letters_by_reason.sql` counts
      them by stage and reason with an example object and error; docs/reliability.md says
      what each reason means and whether the catch-up retries it. Fix the cause, then embed
      the final ones again with `embed-backfill --skip-existing --retry-dead-letters`.
      See docs/monitoring.md, "Dashboard and alerts in infra/".
    EOT
  }
}

resource "google_monitoring_alert_policy" "latency" {
  display_name          = "Image embeddings: notification-to-row latency"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.alert_notification_channels
  depends_on            = [google_project_service.apis]

  # The window's mean: the growth of mean x count (the sum of latencies) over the growth
  # of count, per run of the job (job_id), from the distribution's _MEAN and _COUNT.
  conditions {
    display_name = "Mean latency above ${var.alert_latency_seconds} s over ${var.alert_window_minutes} min"
    condition_prometheus_query_language {
      query = <<-EOT
        (
          max by (job_id) (dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="notification_to_row_ms_MEAN"})
          * max by (job_id) (dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="notification_to_row_ms_COUNT"})
          - max by (job_id) (dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="notification_to_row_ms_MEAN"} offset ${var.alert_window_minutes}m)
          * max by (job_id) (dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="notification_to_row_ms_COUNT"} offset ${var.alert_window_minutes}m)
        )
        / (
          max by (job_id) (dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="notification_to_row_ms_COUNT"})
          - max by (job_id) (dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="notification_to_row_ms_COUNT"} offset ${var.alert_window_minutes}m)
        )
        > ${var.alert_latency_seconds * 1000}
      EOT
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Rows of the job `${var.job_name}` landed on average more than
      ${var.alert_latency_seconds} s after their notification's event time over the last
      ${var.alert_window_minutes} minutes. The dashboard's backlog and oldest
      notification say whether the job is behind (more workers: `--max_num_workers`) or
      slow per image (the worker logs, BigQuery retries); `schemas/sql/latency.sql` gives
      percentiles over the stored rows.
      See docs/monitoring.md, "Dashboard and alerts in infra/".
    EOT
  }
}

resource "google_monitoring_alert_policy" "catch_up" {
  display_name          = "Image embeddings: catch-up pass abandoned"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.alert_notification_channels
  depends_on            = [google_project_service.apis]

  conditions {
    display_name = "catch_up.abandoned grew within ${var.alert_window_minutes} min"
    condition_prometheus_query_language {
      query = <<-EOT
        sum(
          dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="catch_up.abandoned"}
          - (
            dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="catch_up.abandoned"} offset ${var.alert_window_minutes}m
            or dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="catch_up.abandoned"} * 0
          )
        ) > 0
      EOT
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The job `${var.job_name}` gave up a catch-up pass after its tries: images whose
      notification never arrived stay without a row until the next pass. The worker logs'
      error line (`catch-up gs://... abandoned`) names the failure, usually a permission
      of the job's service account on the bucket or a BigQuery query job. Fix it; the next
      pass (`--catch_up_every_minutes`, a restart, or `embed-backfill --skip-existing`)
      covers what this one missed.
      See docs/monitoring.md, "Dashboard and alerts in infra/".
    EOT
  }
}

resource "google_monitoring_alert_policy" "bigquery_stalled" {
  display_name          = "Image embeddings: BigQuery writes stalled"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.alert_notification_channels
  depends_on            = [google_project_service.apis]

  conditions {
    display_name = "bigquery.stalled grew within ${var.alert_window_minutes} min"
    condition_prometheus_query_language {
      query = <<-EOT
        sum(
          dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="bigquery.stalled"}
          - (
            dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="bigquery.stalled"} offset ${var.alert_window_minutes}m
            or dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job", job_name="${var.job_name}", metric_name="bigquery.stalled"} * 0
          )
        ) > 0
      EOT
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The job `${var.job_name}` is waiting to write rows: BigQuery refused them for a
      cause no retry fixes (the dataset is missing, the job's service account lacks a
      permission, the table lacks a column the rows have). Nothing is lost: the rows go in
      once it is fixed. The worker logs' error line (`BigQuery ... is waiting: ...`, one
      a minute) names the cause and what to add.
      See docs/monitoring.md, "Dashboard and alerts in infra/".
    EOT
  }
}

resource "google_monitoring_alert_policy" "worker_errors" {
  display_name          = "Image embeddings: worker errors"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.alert_notification_channels
  depends_on            = [google_project_service.apis]

  conditions {
    display_name = "More than ${var.alert_worker_errors} error lines in ${var.alert_window_minutes} min"
    condition_prometheus_query_language {
      query = <<-EOT
        sum(increase(logging_googleapis_com:user_${google_logging_metric.worker_errors.name}{monitored_resource="dataflow_step"}[${var.alert_window_minutes}m]))
        > ${var.alert_worker_errors}
      EOT
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The workers of the job `${var.job_name}` logged error lines. Read them in Logs
      Explorer (`resource.type="dataflow_step"`, `resource.labels.job_name="${var.job_name}"`,
      `severity>=ERROR`): each names its cause, and the other alerts cover the usual ones
      (a BigQuery stall, an abandoned catch-up pass).
      See docs/monitoring.md, "Dashboard and alerts in infra/".
    EOT
  }
}
