#!/usr/bin/env python3
"""Drives the real PyCap (`redcap.Project`) against a REDCap API and prints a JSON manifest.

The manifest lists every user-level call made and every HTTP request PyCap really sent (seen
through a requests response hook on PyCap's shared session), so a test can cross-check the
server's log. Call sets: `full` (every method the e2e test needs), `light` (a compliant
client: three requests), `burst` (many small calls in a row), `heavy` (unfiltered exports).
"""

import argparse
import io
import json
import sys
import urllib.parse

from redcap import Project, RedcapError
from redcap import request as redcap_request

WIRE = []


def on_response(response, *args, **kwargs):
    req = response.request
    body = req.body or b""
    if isinstance(body, str):
        body = body.encode()
    ctype = req.headers.get("Content-Type", "")
    params = {}
    if ctype.startswith("application/x-www-form-urlencoded"):
        params = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    else:
        # multipart: PyCap sends the plain fields as parts; enough to name the call.
        for key in ("content", "action", "format", "returnFormat"):
            marker = f'name="{key}"\r\n\r\n'.encode()
            at = body.find(marker)
            if at >= 0:
                end = body.find(b"\r\n", at + len(marker))
                params[key] = body[at + len(marker) : end].decode("utf-8", "replace")
    WIRE.append(
        {
            "content": params.get("content"),
            "action": params.get("action"),
            "format": params.get("format"),
            "status": response.status_code,
            "request_bytes": len(body),
            "response_bytes": len(response.content),
        }
    )


def run(calls, name, fn):
    try:
        fn()
        calls.append({"call": name, "ok": True})
    except RedcapError:
        calls.append({"call": name, "ok": False, "error": "RedcapError"})


def full_set(url, token, bad_token, calls):
    proj = Project(url, token)
    run(calls, "export_version", proj.export_version)
    run(calls, "export_metadata", proj.export_metadata)
    run(calls, "export_records", proj.export_records)
    run(calls, "export_records(records)", lambda: proj.export_records(records=["1", "2", "3"]))
    run(calls, "export_records(fields)", lambda: proj.export_records(fields=["record_id", "field_1"]))
    run(calls, "export_records(csv)", lambda: proj.export_records(format_type="csv"))
    rows = [{"record_id": str(100 + i), "field_1": str(i)} for i in range(25)]
    run(calls, "import_records", lambda: proj.import_records(rows))
    upload = io.BytesIO(bytes((i * 7) % 251 for i in range(4096)))
    run(
        calls,
        "import_file",
        lambda: proj.import_file(record="1", field="upload_field", file_name="scan.bin", file_object=upload),
    )
    run(calls, "export_file", lambda: proj.export_file(record="1", field="upload_field"))
    run(calls, "export_report", lambda: proj.export_report(report_id="1"))
    run(calls, "export_logging", proj.export_logging)
    run(calls, "export_project_info", proj.export_project_info)
    wrong = Project(url, bad_token)
    run(calls, "export_metadata(wrong token)", wrong.export_metadata)


def light_set(url, token, calls):
    proj = Project(url, token)
    run(calls, "export_version", proj.export_version)
    # Not export_records: PyCap fetches the metadata first, which would make it four requests.
    run(calls, "export_metadata", proj.export_metadata)
    run(calls, "export_project_info", proj.export_project_info)


def burst_set(url, token, calls, n):
    proj = Project(url, token)
    for _ in range(n):
        run(calls, "export_version", proj.export_version)


def heavy_set(url, token, calls):
    proj = Project(url, token)
    run(calls, "export_records", proj.export_records)
    run(calls, "export_records", proj.export_records)
    run(calls, "export_report", lambda: proj.export_report(report_id="7"))


def main(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("token")
    p.add_argument("--set", choices=["full", "light", "burst", "heavy"], default="full")
    p.add_argument("--bad-token", default="FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF")
    p.add_argument("--burst", type=int, default=6)
    args = p.parse_args(argv)

    redcap_request._session.hooks["response"].append(on_response)
    calls = []
    if args.set == "full":
        full_set(args.url, args.token, args.bad_token, calls)
    elif args.set == "light":
        light_set(args.url, args.token, calls)
    elif args.set == "burst":
        burst_set(args.url, args.token, calls, args.burst)
    else:
        heavy_set(args.url, args.token, calls)
    json.dump({"calls": calls, "requests": WIRE}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
