"""`kxds status`: what every Ingress and every connected gateway looks like, as a table
(what `istioctl proxy-status` gives Istio users), read from a running kxds's admin address."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

TYPES = ("CDS", "EDS", "LDS", "RDS", "SDS")


def fetch(admin_address: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{admin_address}{path}", timeout=10) as response:
        return json.loads(response.read())


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def render_status(ingresses: list[dict[str, Any]], gateways: dict[str, Any]) -> str:
    ingress_rows = [
        [f"{i['namespace']}/{i['name']}", "True" if i["ready"] else "False", i["reason"] or "-",
         ",".join(i.get("hosts", [])[:3]) + (f" (+{len(i['hosts']) - 3})" if len(i.get("hosts", [])) > 3 else ""), i["message"] or ""]
        for i in ingresses
    ]
    gateway_rows = [
        [g["node"] or "-", g["peer"], "SYNCED" if g["synced"] else "PENDING", *(g["acked"].get(t, "-") for t in TYPES), g["last_nack"] or "-"]
        for g in gateways["gateways"]
    ]
    return "\n\n".join([
        f"INGRESSES ({len(ingresses)}, {sum(i['ready'] for i in ingresses)} ready)",
        table(["INGRESS", "READY", "REASON", "HOSTS", "MESSAGE"], ingress_rows),
        f"GATEWAYS ({len(gateway_rows)} connected, snapshot {gateways['snapshot_serial']})",
        table(["NODE", "PEER", "STATE", *TYPES, "LAST NACK"], gateway_rows),
    ]) + "\n"


def status(admin_address: str) -> str:
    return render_status(fetch(admin_address, "/ingresses"), fetch(admin_address, "/gateways"))
