"""One Helm release action on the cellmesh chart through the official Helm Go SDK
(helm-python-sdk), against a real API server.

Usage: release.py KUBECONFIG NAMESPACE install|upgrade|uninstall NAME [CHART VALUES_JSON]

Prints {"result": <the SDK's release>, "history": [...]} as one JSON line; a failure exits
non-zero with the SDK's error on stderr.
"""

import json
import sys

import helm_python as helm


def main() -> None:
    kubeconfig, namespace, action, name = sys.argv[1:5]
    try:
        with helm.Config(kubeconfig_path=kubeconfig, namespace=namespace) as cfg:
            if action == "install":
                chart, values = sys.argv[5], json.loads(sys.argv[6])
                result = cfg.install(chart, name, values, timeout=120, create_namespace=True)
            elif action == "upgrade":
                chart, values = sys.argv[5], json.loads(sys.argv[6])
                result = cfg.upgrade(chart, name, values, timeout=120)
            elif action == "uninstall":
                result = cfg.uninstall(name, timeout=120)
            else:
                sys.exit(f"unknown action {action!r}")
            print(json.dumps({"result": result, "history": history(cfg, name)}))
    except helm.HelmError as err:
        print(f"helm {action}: {err}", file=sys.stderr)
        sys.exit(1)


def history(cfg: helm.Config, name: str) -> list:
    try:
        return cfg.history(name)
    except helm.HelmNotFoundError:
        return []


if __name__ == "__main__":
    main()
