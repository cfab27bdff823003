"""``python -m pipeline.report``: print the summary table of a sweep (``tracking.summary``)::

    python -m pipeline.report                   # the latest sweep in the store
    python -m pipeline.report pipeline-digits   # the latest sweep of that experiment
    python -m pipeline.report <parent run id>   # that sweep
"""

from __future__ import annotations

from pipeline.interrupts import STOPPED, exit_while_starting, imported, run_command

with exit_while_starting(STOPPED):  # a Ctrl-C while these load: one line
    import argparse
    import re
    from typing import TYPE_CHECKING

    from pipeline.tracking.store import TrackingError, check_server, resolve_uri, sqlite_path
    from pipeline.tracking.summary import OBJECTIVE, SWEEP_TAG, format_table, sweep_table


if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


def find_parent(client: MlflowClient, target: str | None) -> Run:
    """The sweep's parent run: ``target`` as a run id, else the latest sweep of the
    experiment named ``target``, else the latest sweep in the store."""
    from mlflow.exceptions import MlflowException

    if target and re.fullmatch(r"[0-9a-f]{32}", target):
        try:
            return client.get_run(target)
        except MlflowException:
            raise SystemExit(f"no run {target} in {client.tracking_uri}") from None
    experiments = client.search_experiments()
    if target:
        experiments = [e for e in experiments if e.name == target]
        if not experiments:
            names = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise SystemExit(
                f"no experiment or run id {target!r} in {client.tracking_uri} "
                f"(experiments: {names})"
            )
    runs = client.search_runs(
        [e.experiment_id for e in experiments], f"tags.`{SWEEP_TAG}` = 'true'",
        order_by=["attributes.start_time DESC"], max_results=1,
    ) if experiments else []
    if not runs:
        where = f"experiment {target!r}" if target else client.tracking_uri
        raise SystemExit(
            f"no sweep in {where}; a sweep is a multirun: python -m pipeline -m key=a,b"
        )
    return runs[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report", description="Print the summary table of a sweep."
    )
    parser.add_argument(
        "target", nargs="?",
        help="a parent run id or an experiment name (default: the latest sweep)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this directory",
    )
    args = parser.parse_args(argv)
    MlflowClient = imported("mlflow.tracking").MlflowClient  # a Ctrl-C waits for it whole

    uri = resolve_uri(args.tracking_uri)
    try:
        check_server(uri)
    except TrackingError as e:
        raise SystemExit(str(e)) from None
    if (path := sqlite_path(uri)) is not None and not path.is_file():
        raise SystemExit(f"no tracking store at {uri}; run from the sweep's launch directory "
                         "or pass --tracking-uri")
    client = MlflowClient(uri)
    parent = find_parent(client, args.target)
    experiment = client.get_experiment(parent.info.experiment_id).name
    table = sweep_table(client, parent.info.run_id)
    print(f"sweep {parent.info.run_name} ({parent.info.run_id}), experiment {experiment}, "
          f"{parent.info.status}; {len(table)} runs, sorted by {OBJECTIVE}")
    print(format_table(table))
    if "best_run_id" in parent.data.tags:
        print(f"best run: {parent.data.tags['best_run_id']}")


if __name__ == "__main__":
    run_command(main)
