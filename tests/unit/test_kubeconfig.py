"""Cluster credentials are looked for as kubectl looks for them, and a miss says what was tried."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kxds.kubeconfig import NoCredentials, resolve


def touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("apiVersion: v1\nkind: Config\n")
    return str(path)


def test_the_flag_wins_then_kubeconfig_then_in_cluster_then_home(tmp_path: Path) -> None:
    flag, listed, other = touch(tmp_path / "flag"), touch(tmp_path / "env-a"), touch(tmp_path / "env-b")
    token = Path(touch(tmp_path / "token"))
    home = tmp_path / "home"
    default = touch(home / ".kube" / "config")
    in_pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    env = {**in_pod, "KUBECONFIG": os.pathsep.join([listed, str(tmp_path / "missing"), other])}
    assert resolve(flag, "kind-kxds", env, home, token).kubeconfig == flag
    chosen = resolve("", "kind-kxds", env, home, token)
    assert (chosen.kubeconfig, chosen.context, chosen.source) == (os.pathsep.join([listed, other]), "kind-kxds", "$KUBECONFIG")
    assert resolve("", "", in_pod, home, token).kubeconfig == ""  # the pod's service account
    assert resolve("", "", {}, home, token).kubeconfig == default  # not in a pod
    assert resolve("", "", {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, home, tmp_path / "no-token").kubeconfig == default


def test_nothing_found_says_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(NoCredentials) as error:
        resolve("", "", {"KUBECONFIG": str(tmp_path / "gone")}, tmp_path / "home", tmp_path / "token")
    message = str(error.value)
    for tried in ("--kubeconfig (not given)", f"$KUBECONFIG ({tmp_path / 'gone'}: none exists)", "in-cluster service account", ".kube/config (missing)"):
        assert tried in message, message
    with pytest.raises(NoCredentials, match="no such file"):
        resolve(str(tmp_path / "absent"), "", {}, tmp_path, tmp_path / "token")
