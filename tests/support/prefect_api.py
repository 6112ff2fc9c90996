"""Reading and driving a Prefect server through its REST API, as the UI does: deployments, their
parameter schemas, flow runs and their logs. One ``httpx.Client`` per server, so tests can talk
to several servers at once without touching Prefect's process-wide settings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx


def deployment(api: httpx.Client, name: str) -> dict[str, Any]:
    """The deployment ``flow/deployment``."""
    response = api.get(f"/deployments/name/{name}")
    response.raise_for_status()
    return response.json()


def delete_deployment(api: httpx.Client, name: str) -> None:
    """Delete the deployment ``flow/deployment`` and its scheduled runs, if it exists."""
    response = api.get(f"/deployments/name/{name}")
    if response.status_code == 404:
        return
    response.raise_for_status()
    api.delete(f"/deployments/{response.json()['id']}").raise_for_status()


def all_deployments(api: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every deployment of the server by its full name ``flow/deployment``."""
    flows = api.post("/flows/filter", json={"limit": 200})
    flows.raise_for_status()
    flow_names = {flow["id"]: flow["name"] for flow in flows.json()}
    deployments = api.post("/deployments/filter", json={"limit": 200})
    deployments.raise_for_status()
    return {f"{flow_names[d['flow_id']]}/{d['name']}": d for d in deployments.json()}


def create_flow_run(
    api: httpx.Client,
    name: str,
    parameters: dict[str, Any] | None = None,
    *,
    work_queue: str | None = None,
    env: dict[str, str] | None = None,
) -> httpx.Response:
    """Ask for a run of the deployment ``flow/deployment`` (the UI's "Run" button): the
    response, 201 with the flow run, or the server's refusal."""
    body: dict[str, Any] = {"parameters": parameters or {}}
    if work_queue:
        body["work_queue_name"] = work_queue
    if env:
        body["job_variables"] = {"env": env}
    return api.post(f"/deployments/{deployment(api, name)['id']}/create_flow_run", json=body)


def flow_runs(api: httpx.Client, deployment_id: str) -> list[dict[str, Any]]:
    """The deployment's flow runs, the earliest expected start first."""
    response = api.post(
        "/flow_runs/filter",
        json={
            "flow_runs": {"deployment_id": {"any_": [deployment_id]}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 200,
        },
    )
    response.raise_for_status()
    return response.json()


def scheduled_runs(
    api: httpx.Client, deployment_id: str, created_after: datetime
) -> list[dict[str, Any]]:
    """The deployment's flow runs that the server's own scheduler created since a time."""
    return [
        run
        for run in flow_runs(api, deployment_id)
        if run["auto_scheduled"] and datetime.fromisoformat(run["created"]) >= created_after
    ]


def flow_run(api: httpx.Client, flow_run_id: str) -> dict[str, Any]:
    response = api.get(f"/flow_runs/{flow_run_id}")
    response.raise_for_status()
    return response.json()


def task_runs(api: httpx.Client, flow_run_id: str) -> list[dict[str, Any]]:
    response = api.post(
        "/task_runs/filter",
        json={"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200},
    )
    response.raise_for_status()
    return response.json()


def flow_run_logs(api: httpx.Client, flow_run_id: str) -> list[str]:
    """The messages the flow run and its tasks logged, oldest first."""
    response = api.post(
        "/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC"},
    )
    response.raise_for_status()
    return [log["message"] for log in response.json()]
