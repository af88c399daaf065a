#!/usr/bin/env python3
"""Writes the Grafana dashboards of deploy/grafana/dashboards/ (the JSON files are generated:
edit this file and run it; tests/deploy_test.py fails when they differ from what it writes).

Three dashboards, all on one Prometheus data source (variable `datasource`):
  fl-federation  the consortium operator: coordinator, sites, jobs, rounds, bytes, rejections
  fl-job         one federated job (variable fl_job): AUROC per finding, epsilon per site, loss
  fl-site        hospital IT: one fl-client (variable instance): tasks, training time, images,
                 privacy budget, certificate, the current task's phase and training progress
Every PromQL expression here is evaluated against a real Prometheus scraping a real federation
by tests/prometheus_test.py; the federated job's id is in label fl_job (prometheus.yml).
"""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}


def target(expr, legend="", ref="A", instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t["instant"], t["range"] = True, False
    return t


class Layout:
    """Places panels left to right in rows of 24 grid units."""

    def __init__(self):
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def panel(self, kind, title, description, targets, w=12, h=8, unit=None, extra=None):
        refs = "ABCDEFGH"
        p = {"id": self.next_id, "type": kind, "title": title, "description": description,
             "datasource": DS, "gridPos": self.place(w, h),
             "targets": [dict(t, refId=refs[i]) for i, t in enumerate(targets)],
             "fieldConfig": {"defaults": {}, "overrides": []}, "options": {}}
        self.next_id += 1
        if unit:
            p["fieldConfig"]["defaults"]["unit"] = unit
        if kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                            "tooltip": {"mode": "multi"}}
        if kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                              "values": False},
                            "colorMode": "value", "graphMode": "area"}
        if extra:
            for k, v in extra.items():
                p["fieldConfig"]["defaults"][k] = v
        return p


def thresholds(*steps):
    """steps: (value or None, color) from the lowest."""
    return {"thresholds": {"mode": "absolute",
                           "steps": [{"value": v, "color": c} for v, c in steps]}}


def dashboard(uid, title, description, panels, variables, tags):
    datasource_var = {"name": "datasource", "label": "Prometheus", "type": "datasource",
                      "query": "prometheus", "current": {}, "hide": 0, "refresh": 1}
    return {
        "uid": uid, "title": title, "description": description, "tags": ["fl"] + tags,
        "timezone": "utc", "schemaVersion": 37, "version": 1, "editable": True,
        "graphTooltip": 1, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [datasource_var] + variables},
        "annotations": {"list": []}, "links": [], "panels": panels,
    }


def query_var(name, label, query, include_all=False):
    v = {"name": name, "label": label, "type": "query", "datasource": DS,
         "query": {"query": query, "refId": "var"}, "definition": query, "refresh": 2,
         "sort": 1, "current": {}, "hide": 0, "includeAll": include_all, "multi": False}
    if include_all:
        v["allValue"] = ".*"
    return v


def federation():
    L = Layout()
    panels = [
        L.panel("stat", "Coordinator up", "1 while Prometheus can scrape fl-coordinator.",
                [target('up{job="fl-coordinator"}', "{{instance}}", instant=True)], w=4, h=4,
                extra=thresholds((None, "red"), (1, "green"))),
        L.panel("stat", "Sites connected", "Sites holding a task stream now.",
                [target("fl_coordinator_sites_connected", "connected", instant=True)], w=4, h=4),
        L.panel("stat", "Jobs running", "Jobs the scheduler is running (one at a time).",
                [target("fl_coordinator_jobs_running", "running", instant=True)], w=4, h=4),
        L.panel("stat", "Rounds committed", "Rounds aggregated and committed since start.",
                [target("fl_coordinator_rounds_completed_total", "rounds", instant=True)],
                w=4, h=4),
        L.panel("stat", "Alerts firing", "Alerts of deploy/prometheus/rules now firing.",
                [target('count(ALERTS{alertstate="firing"}) or vector(0)', "firing",
                        instant=True)], w=4, h=4,
                extra=thresholds((None, "green"), (1, "orange"))),
        L.panel("stat", "Certificate expires in",
                "Time left on the coordinator's certificate and its CA; alert below 14 days.",
                [target("fl:tls_certificate_expiry_seconds", "{{file}}", instant=True)],
                w=4, h=4, unit="s", extra=thresholds((None, "red"), (14 * 86400, "green"))),
        L.panel("timeseries", "Site silence",
                "Seconds since each site's last sign of life (keepalives come every second "
                "while connected); FlSiteSilent fires above 10 minutes.",
                [target("fl:site_silence_seconds", "{{site}}")], unit="s"),
        L.panel("state-timeline", "Sites connected",
                "1 while the site holds a task stream.",
                [target("fl_coordinator_site_connected", "{{site}}")]),
        L.panel("timeseries", "Updates by result",
                "Uploaded updates per second: accepted, rejected (invalid or hostile), failed "
                "(not stored: disk), stale (for a round not open, e.g. after a restart).",
                [target("fl:updates:rate5m", "{{result}}")], unit="ops"),
        L.panel("timeseries", "Model bytes",
                "Tensor bytes per second received in updates and sent as global models.",
                [target("rate(fl_coordinator_update_bytes_total[$__rate_interval])", "updates in"),
                 target("rate(fl_coordinator_download_bytes_total[$__rate_interval])",
                        "models out")], unit="Bps"),
        L.panel("timeseries", "Round duration",
                "Median and 90th percentile of the time from opening a round to committing it.",
                [target("histogram_quantile(0.5, sum by (le) "
                        "(rate(fl_coordinator_round_duration_seconds_bucket[30m])))", "p50"),
                 target("histogram_quantile(0.9, sum by (le) "
                        "(rate(fl_coordinator_round_duration_seconds_bucket[30m])))", "p90"),
                 target("fl:round_duration_seconds:mean6h", "6 h mean")], unit="s"),
        L.panel("timeseries", "Rounds, failures and declines",
                "Per hour: rounds committed, round attempts failed (no quorum, not stored), "
                "tasks declined by sites (privacy budget, policy).",
                [target("increase(fl_coordinator_rounds_completed_total[1h])", "committed"),
                 target("increase(fl_coordinator_rounds_failed_total[1h])", "failed"),
                 target("increase(fl_coordinator_task_declines_total[1h])", "declined")]),
        L.panel("timeseries", "Evaluation reports by result",
                "Reports per hour: accepted, rejected, duplicate (a resend), stale.",
                [target("sum by (result) (increase(fl_coordinator_reports_total[1h]))",
                        "{{result}}")]),
        L.panel("timeseries", "Storage failures",
                "Writes to state_dir that failed per hour (disk full or failing).",
                [target("increase(fl_coordinator_storage_failures_total[1h])", "failures")],
                extra=thresholds((None, "green"), (1, "red"))),
        L.panel("timeseries", "Job progress",
                "Rounds committed of the running job against its plan.",
                [target("fl_coordinator_job_rounds_done", "{{fl_job}} done"),
                 target("fl_coordinator_job_rounds_planned", "{{fl_job}} planned")]),
        L.panel("timeseries", "Time since the last committed round",
                "Seconds since the running job committed a round, against 1.5 x its deadline "
                "+ 60 s (FlRoundStuck).",
                [target("fl:job_round_age_seconds", "{{fl_job}}"),
                 target("1.5 * fl_coordinator_job_round_deadline_seconds + 60",
                        "{{fl_job}} stuck above")], unit="s"),
    ]
    return dashboard("fl-federation", "FL / Federation",
                     "The consortium operator's view of fl-coordinator: sites, jobs, rounds, "
                     "transfers, rejections and storage.", panels, [], ["operator"])


def job():
    L = Layout()
    sel = '{fl_job="$fl_job"}'
    panels = [
        L.panel("timeseries", "Mean AUROC",
                "Mean over findings of the median over sites of each round's test AUROC.",
                [target(f"fl_coordinator_job_mean_auroc{sel}", "mean AUROC")], unit="percentunit"),
        L.panel("timeseries", "AUROC per finding",
                "Median over sites of the test AUROC of the model each round started from.",
                [target(f"fl_coordinator_job_auroc{sel}", "{{label}}")], unit="percentunit"),
        L.panel("timeseries", "Epsilon per site",
                "Privacy spent (epsilon at the job's delta) each site reported with its updates.",
                [target(f"fl_coordinator_site_privacy_epsilon{sel}", "{{site}}")]),
        L.panel("timeseries", "Training loss",
                "Mean of the sites' training losses in the last round, weighted as their updates; "
                "empty for a DP job (a site keeps its loss: it is not noised).",
                [target(f"fl_coordinator_job_train_loss{sel}", "loss")]),
        L.panel("timeseries", "Rounds",
                "Rounds committed against the job's plan (while it runs).",
                [target(f"fl_coordinator_job_rounds_done{sel}", "done"),
                 target(f"fl_coordinator_job_rounds_planned{sel}", "planned")]),
        L.panel("timeseries", "Time since the last committed round",
                "Against 1.5 x the round deadline + 60 s, where FlRoundStuck fires.",
                [target(f"fl:job_round_age_seconds{sel}", "since last round"),
                 target(f"1.5 * fl_coordinator_job_round_deadline_seconds{sel} + 60",
                        "stuck above")], unit="s"),
    ]
    variables = [query_var("fl_job", "Job", "label_values(fl_coordinator_job_mean_auroc, fl_job)")]
    return dashboard("fl-job", "FL / Job",
                     "One federated job: validation AUROC per finding over rounds, privacy "
                     "spent per site, loss and progress.", panels, variables, ["operator"])


def site():
    L = Layout()
    sel = '{instance=~"$instance"}'
    panels = [
        L.panel("stat", "fl-client up", "1 while Prometheus can scrape the site daemon.",
                [target(f'up{{job="fl-client",instance=~"$instance"}}', "{{instance}}",
                        instant=True)], w=4, h=4, extra=thresholds((None, "red"), (1, "green"))),
        L.panel("stat", "Connected", "1 while the task stream to the coordinator is open.",
                [target(f"fl_client_connected{sel}", "{{instance}}", instant=True)], w=4, h=4,
                extra=thresholds((None, "red"), (1, "green"))),
        L.panel("stat", "Usable images", "Labelled images found in data_dir (train + test).",
                [target(f"fl_client_images{sel}", "{{instance}}", instant=True)], w=4, h=4),
        L.panel("stat", "Files skipped", "Files or labels-CSV rows the data source skipped (the "
                "metric has them by reason: unreadable, missing_file, duplicate, bad_row); the "
                "log and `flctl data check` name each file and the full reason.",
                [target(f"sum by (instance) (fl_client_images_skipped{sel})", "{{instance}}",
                        instant=True)],
                w=4, h=4, extra=thresholds((None, "green"), (1, "orange"))),
        L.panel("gauge", "Privacy budget used",
                "Share of budget.max_epsilon the dataset has spent over every job; the site "
                "declines rounds that would go over it.",
                [target(f"fl:privacy_budget_used:ratio{sel}", "{{instance}}", instant=True)],
                w=4, h=4, unit="percentunit",
                extra=dict(thresholds((None, "green"), (0.75, "orange"), (0.9, "red")),
                           min=0, max=1)),
        L.panel("stat", "Certificate expires in",
                "Time left on the site's certificate and its CA; alert below 14 days.",
                [target(f"fl:tls_certificate_expiry_seconds{sel}", "{{file}}", instant=True)],
                w=4, h=4, unit="s", extra=thresholds((None, "red"), (14 * 86400, "green"))),
        L.panel("timeseries", "Tasks by result",
                "Tasks per hour: done, declined (policy or budget; the reason is in the log and "
                "in flctl job status), failed.",
                [target(f"sum by (result) (increase(fl_client_tasks_total{sel}[1h]))",
                        "{{result}}")]),
        L.panel("timeseries", "Local training time",
                "Median and 90th percentile of the training time per task.",
                [target("histogram_quantile(0.5, sum by (le) (rate("
                        f"fl_client_train_duration_seconds_bucket{sel}[1h])))", "p50"),
                 target("histogram_quantile(0.9, sum by (le) (rate("
                        f"fl_client_train_duration_seconds_bucket{sel}[1h])))", "p90")],
                unit="s"),
        L.panel("timeseries", "Epsilon spent",
                "Over every job against the cap (the ledger), and per job.",
                [target(f"fl_client_privacy_spent_epsilon{sel}", "all jobs"),
                 target(f"fl_client_privacy_budget_epsilon{sel}", "cap"),
                 target(f"fl_client_privacy_epsilon{sel}", "job {{fl_job}}")]),
        L.panel("timeseries", "AUROC at this site",
                "Test AUROC of the latest global model on this site's held-out split.",
                [target(f"fl_client_test_auroc{sel}", "{{fl_job}} {{label}}")],
                unit="percentunit"),
        L.panel("timeseries", "Model bytes",
                "Bytes per second of global models received and updates sent.",
                [target(f"rate(fl_client_download_bytes_total{sel}[$__rate_interval])",
                        "models in"),
                 target(f"rate(fl_client_upload_bytes_total{sel}[$__rate_interval])",
                        "updates out")], unit="Bps"),
        L.panel("timeseries", "Reconnects and resends",
                "Per hour: connection attempts after a failure, and calls sent again after a "
                "transient failure.",
                [target(f"increase(fl_client_reconnects_total{sel}[1h])", "reconnects"),
                 target(f"sum by (rpc) (increase(fl_client_send_retries_total{sel}[1h]))",
                        "resent {{rpc}}")]),
        L.panel("state-timeline", "Task phase",
                "1 for the phase of the current task: idle, downloading, evaluating, training, "
                "uploading (flctl job watch shows every site's).",
                [target(f"fl_client_task_phase{sel}", "{{phase}}")], w=8),
        L.panel("timeseries", "Local training steps",
                "Local steps done of the current (or last) training's total.",
                [target(f"fl_client_train_steps_done{sel}", "done"),
                 target(f"fl_client_train_steps{sel}", "of")], w=8),
        L.panel("timeseries", "Training throughput",
                "Images per second of the current (or last) local training.",
                [target(f"fl_client_train_images_per_second{sel}", "{{instance}}")], w=8),
    ]
    variables = [query_var("instance", "fl-client", 'label_values(fl_client_connected, instance)',
                           include_all=True)]
    return dashboard("fl-site", "FL / Site",
                     "Hospital IT's view of one fl-client: connection, tasks, training time, "
                     "images, privacy budget and certificate.", panels, variables, ["site"])


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")
    if len(sys.argv) > 1:
        out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, board in (("fl-federation", federation()), ("fl-job", job()),
                        ("fl-site", site())):
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(board, f, indent=2, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
