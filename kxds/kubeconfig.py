"""Which cluster credentials to use, looked for as kubectl and controller-runtime look for them:
`--kubeconfig`, then `$KUBECONFIG` (a list of files, merged), then the pod's service account when
running in a pod, then `~/.kube/config`. `--context` picks a context of the kubeconfig."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class NoCredentials(Exception):
    """No source of credentials was found; the message says what was tried."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A kubeconfig (one path, or several joined by os.pathsep as $KUBECONFIG holds them), or the
    in-cluster service account when `kubeconfig` is empty."""

    kubeconfig: str
    context: str = ""
    source: str = ""  # what was chosen, for the log


def resolve(flag: str = "", context: str = "", env: Mapping[str, str] | None = None, home: Path | None = None,
            token: Path = IN_CLUSTER_TOKEN) -> Credentials:
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    tried = []
    if flag:
        if not Path(flag).is_file():
            raise NoCredentials(f"--kubeconfig {flag}: no such file")
        return Credentials(flag, context, "--kubeconfig")
    listed = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        present = [p for p in listed if Path(p).is_file()]
        if present:
            return Credentials(os.pathsep.join(present), context, "$KUBECONFIG")
        tried.append(f"$KUBECONFIG ({', '.join(listed)}: none exists)")
    else:
        tried.append("$KUBECONFIG (unset)")
    if env.get("KUBERNETES_SERVICE_HOST") and token.is_file():
        if context:
            raise NoCredentials("--context needs a kubeconfig; in a pod kxds uses its service account")
        return Credentials("", "", "in-cluster service account")
    tried.append(f"in-cluster service account (KUBERNETES_SERVICE_HOST {'set' if env.get('KUBERNETES_SERVICE_HOST') else 'unset'}, "
                 f"{token} {'present' if token.is_file() else 'missing'})")
    default = home / ".kube" / "config"
    if default.is_file():
        return Credentials(str(default), context, "~/.kube/config")
    tried.append(f"{default} (missing)")
    raise NoCredentials("no Kubernetes credentials found; tried --kubeconfig (not given), " + ", ".join(tried))
