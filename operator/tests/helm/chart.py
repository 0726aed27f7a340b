"""Offline Helm actions on a chart through the official Helm Go SDK (helm-python-sdk).

Usage:
  chart.py lint CHART VALUES_JSON     -> {"messages": [...], "errors": [...]}
  chart.py render CHART VALUES_JSON   -> {"template path": "manifest", ...}

Prints one JSON document; a Helm error (bad values, failed template) exits 1 with the
SDK's message on stderr.
"""

import json
import sys

import helm_python as helm


def main() -> None:
    action, chart_path, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        if action == "lint":
            report = helm.lint(chart_path, values, strict=True, kube_version="v1.33.0")
            print(json.dumps(report))
        elif action == "render":
            chart = helm.Chart.load(chart_path)
            try:
                chart.validate_schema(values)
                rendered = chart.render(values, name="cellmesh", namespace="cellmesh-system", is_install=True)
            finally:
                chart.close()
            print(json.dumps(rendered))
        else:
            sys.exit(f"unknown action {action!r}")
    except helm.HelmError as err:
        print(str(err), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
