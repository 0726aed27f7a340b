"""One Helm release action through the official Helm Go SDK (helm-python-sdk).

Usage: release.py KUBECONFIG install|upgrade|uninstall NAME [CHART VALUES_JSON]

Prints the SDK's result as one JSON line; a failure exits non-zero with the SDK's error.
"""

import json
import sys

import helm_python as helm


def main() -> None:
    kubeconfig, action, name = sys.argv[1:4]
    with helm.Config(kubeconfig_path=kubeconfig, namespace="default") as cfg:
        if action == "install":
            chart, values = sys.argv[4], json.loads(sys.argv[5])
            result = cfg.install(chart, name, values, timeout=60)
        elif action == "upgrade":
            chart, values = sys.argv[4], json.loads(sys.argv[5])
            result = cfg.upgrade(chart, name, values, timeout=60)
        elif action == "uninstall":
            result = cfg.uninstall(name, timeout=60)
        else:
            sys.exit(f"unknown action {action!r}")
        print(json.dumps({"result": result, "history": history(cfg, name)}))


def history(cfg: helm.Config, name: str) -> list:
    try:
        return cfg.history(name)
    except helm.HelmNotFoundError:
        return []


if __name__ == "__main__":
    main()
