#!/usr/bin/env python3
"""A REDCap API simulator for redcap-monitor's end-to-end tests (Python 3.11 stdlib only).

It answers the way REDCap 15.7.6 behind Apache/PHP does on the wire (HTTP/1.1 keep-alive,
gzip + chunked output like ob_gzhandler, never gzip for file downloads, 403 on unknown tokens,
error bodies in the returnFormat) and writes one JSONL line per request to --log, written
*before* the response is sent so a client that has its answer can trust the log holds it.
Content is generated from a seed, so the same call always has the same size.
"""

import argparse
import email.parser
import email.policy
import gzip
import json
import random
import re
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "15.7.6"
FORBIDDEN = "You do not have permissions to use the API"
API_PATH = re.compile(r"^(?:/.*)?/(?:api/(?:index\.php)?|redcap_v\d+\.\d+\.\d+/API/(?:index\.php)?)$")
HTML_GET_PATHS = {"/", "/redcap/", "/redcap/index.php"}
HTML_POST_PATHS = {"/redcap/index.php", "/index.php"}
# How many pieces a gzip body is cut into at least, so chunked decoding is really exercised.
MIN_CHUNKS = 3
MAX_CHUNK = 16 * 1024


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--tokens", default="", help="comma list of valid tokens")
    p.add_argument("--log", help="JSONL request log")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fields", type=int, default=24, help="fields per record besides record_id")
    p.add_argument("--records", type=int, default=40, help="default project size in records")
    p.add_argument(
        "--project-size",
        action="append",
        default=[],
        metavar="TOKEN=NRECORDS",
        help="project size for one token (repeatable)",
    )
    p.add_argument("--file-size", type=int, default=30000, help="bytes of a file export")
    p.add_argument("--log-entries", type=int, default=300, help="rows of a log export")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Deterministic project content


class Project:
    """Metadata and records of the one project every token opens, sized per token."""

    def __init__(self, seed, n_fields):
        self.seed = seed
        self.fields = self._metadata(n_fields)
        self.field_names = [f["field_name"] for f in self.fields]

    def _metadata(self, n_fields):
        rng = random.Random(f"{self.seed}-metadata")
        fields = [self._field("record_id", "text", "Record ID", rng)]
        kinds = ["text", "notes", "radio", "dropdown", "yesno", "calc"]
        for i in range(n_fields):
            kind = kinds[i % len(kinds)]
            fields.append(self._field(f"field_{i + 1}", kind, f"Question {i + 1}", rng))
        fields.append(self._field("upload_field", "file", "Upload a document", rng))
        fields.append(self._field("form_1_complete", "radio", "Complete?", rng))
        return fields

    @staticmethod
    def _field(name, kind, label, rng):
        choices = ""
        if kind in ("radio", "dropdown"):
            choices = " | ".join(f"{k}, Choice {k} {rng.randrange(10**6)}" for k in range(1, 6))
        return {
            "field_name": name,
            "form_name": "form_1",
            "section_header": "",
            "field_type": kind,
            "field_label": f"{label} ({rng.randrange(10**9):09d})",
            "select_choices_or_calculations": choices,
            "field_note": "",
            "text_validation_type_or_show_slider_number": "",
            "text_validation_min": "",
            "text_validation_max": "",
            "identifier": "",
            "branching_logic": "",
            "required_field": "",
            "custom_alignment": "",
            "question_number": "",
            "matrix_group_name": "",
            "matrix_ranking": "",
            "field_annotation": "",
        }

    def record(self, record_id):
        rng = random.Random(f"{self.seed}-record-{record_id}")
        row = {}
        for f in self.fields:
            name = f["field_name"]
            if name == "record_id":
                row[name] = str(record_id)
            elif f["field_type"] == "file":
                row[name] = f"doc_{record_id}.pdf"
            elif f["field_type"] == "notes":
                row[name] = " ".join(f"w{rng.randrange(10**5)}" for _ in range(rng.randrange(3, 12)))
            else:
                row[name] = str(rng.randrange(10**rng.randrange(1, 8)))
        return row

    def records(self, n_records, wanted_ids, wanted_fields):
        ids = [str(i) for i in range(1, n_records + 1)]
        if wanted_ids:
            ids = [i for i in ids if i in set(wanted_ids)]
        names = self.field_names
        if wanted_fields:
            names = [n for n in names if n in set(wanted_fields)]
        rows = []
        for i in ids:
            full = self.record(int(i))
            rows.append({k: full[k] for k in names})
        return names, rows


def render_rows(names, rows, fmt, root="records", item="item"):
    if fmt == "json":
        return json.dumps(rows, separators=(",", ":")), "application/json; charset=utf-8"
    if fmt == "csv":
        lines = [",".join(names)]
        for r in rows:
            lines.append(",".join(csv_cell(r.get(n, "")) for n in names))
        return "\n".join(lines) + "\n", "text/csv; charset=utf-8"
    out = ['<?xml version="1.0" encoding="UTF-8" ?>', f"<{root}>"]
    for r in rows:
        cells = "".join(f"<{n}><![CDATA[{r.get(n, '')}]]></{n}>" for n in names)
        out.append(f"<{item}>{cells}</{item}>")
    out.append(f"</{root}>")
    return "\n".join(out), "text/xml; charset=utf-8"


def csv_cell(value):
    value = str(value)
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def error_body(message, fmt):
    """REDCap's RestUtility::sendResponse error shapes."""
    if fmt == "json":
        return json.dumps({"error": message}), "application/json; charset=utf-8"
    if fmt == "csv":
        return f"ERROR: {message}", "text/csv; charset=utf-8"
    return (
        f'<?xml version="1.0" encoding="UTF-8" ?><hash><error>{message}</error></hash>',
        "text/xml; charset=utf-8",
    )


# ---------------------------------------------------------------------------------------------
# Request bodies


def parse_form(content_type, body):
    """Returns (params: dict of last values + 'name[]' lists, files: dict name -> bytes)."""
    params, files = {}, {}
    ctype = (content_type or "").lower()
    if ctype.startswith("multipart/form-data"):
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if msg.is_multipart():
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name is None:
                    continue
                payload = part.get_payload(decode=True) or b""
                if part.get_filename() is not None:
                    files[name] = payload
                else:
                    add_param(params, name, payload.decode("utf-8", "replace"))
    else:
        text = body.decode("utf-8", "replace")
        for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
            add_param(params, name, value)
    return params, files


def add_param(params, name, value):
    """PHP semantics: 'a[0]', 'a[]' build an array; a repeated plain name keeps the last value."""
    m = re.match(r"^([^\[]+)\[[^\]]*\]$", name)
    if m:
        params.setdefault(m.group(1) + "[]", []).append(value)
    else:
        params[name] = value


def array_param(params, name):
    if name + "[]" in params:
        return params[name + "[]"]
    value = params.get(name)
    if value:
        return [v for v in value.split(",") if v]
    return []


def accepts_gzip(header):
    for item in (header or "").split(","):
        parts = [p.strip() for p in item.split(";")]
        if parts[0].lower() in ("gzip", "x-gzip", "*"):
            q = next((p[2:] for p in parts[1:] if p.startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


# ---------------------------------------------------------------------------------------------
# The server


class Simulator:
    def __init__(self, args):
        self.args = args
        self.project = Project(args.seed, args.fields)
        self.tokens = {t.strip().upper() for t in args.tokens.split(",") if t.strip()}
        self.sizes = {}
        for spec in args.project_size:
            token, _, n = spec.partition("=")
            self.sizes[token.strip().upper()] = int(n)
        self.log_lock = threading.Lock()
        self.log_file = open(args.log, "a", encoding="utf-8") if args.log else None

    def log(self, entry):
        if self.log_file is None:
            return
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self.log_lock:
            self.log_file.write(line)
            self.log_file.flush()

    def answer(self, params, files):
        """Returns (status, body: bytes, content_type, compressible)."""
        fmt = params.get("format", "xml") or "xml"
        return_fmt = params.get("returnFormat") or fmt
        token = params.get("token", "")
        if not re.fullmatch(r"[A-Za-z0-9]+", token or "") or token.upper() not in self.tokens:
            return self.error(403, FORBIDDEN, return_fmt)
        n_records = self.sizes.get(token.upper(), self.args.records)
        content = params.get("content", "")
        action = params.get("action", "")
        if content == "version":
            return 200, VERSION.encode(), "text/html; charset=utf-8", True
        if content == "metadata":
            wanted = array_param(params, "fields")
            rows = [f for f in self.project.fields if not wanted or f["field_name"] in wanted]
            names = list(self.project.fields[0].keys())
            return self.rows(names, rows, fmt)
        if content == "record":
            if "data" in params:
                return self.import_count(params["data"], fmt, return_fmt)
            if action == "delete":
                n = len(array_param(params, "records"))
                return self.ok(str(n), fmt)
            names, rows = self.project.records(
                n_records, array_param(params, "records"), array_param(params, "fields")
            )
            return self.rows(names, rows, fmt)
        if content == "report":
            if not params.get("report_id"):
                return self.error(400, 'The parameter "report_id" is missing', return_fmt)
            names = self.project.field_names[: max(2, len(self.project.field_names) // 2)]
            names, rows = self.project.records(n_records, [], names)
            return self.rows(names, rows, fmt)
        if content == "log":
            rng = random.Random(f"{self.args.seed}-log")
            names = ["timestamp", "username", "action", "details", "record"]
            rows = [
                {
                    "timestamp": f"2026-01-{1 + i % 28:02d} 10:{i % 60:02d}",
                    "username": f"user{rng.randrange(20)}",
                    "action": "Update record " + str(1 + i % max(n_records, 1)),
                    "details": f"field_{1 + rng.randrange(20)} = '{rng.randrange(10**6)}'",
                    "record": str(1 + i % max(n_records, 1)),
                }
                for i in range(self.args.log_entries)
            ]
            return self.rows(names, rows, fmt)
        if content == "project":
            info = {
                "project_id": 17,
                "project_title": "Simulated study",
                "creation_time": "2026-01-01 09:00:00",
                "in_production": 1,
                "record_autonumbering_enabled": 0,
                "is_longitudinal": 0,
                "has_repeating_instruments_or_events": 0,
                "purpose": 2,
            }
            return self.rows(list(info.keys()), [info], fmt, single=True)
        if content == "project_xml":
            names, rows = self.project.records(
                0 if params.get("returnMetadataOnly", "").lower() in ("1", "true") else n_records,
                array_param(params, "records"),
                [],
            )
            body, ctype = render_rows(names, rows, "xml", root="ODM", item="ClinicalData")
            return 200, body.encode(), ctype, True
        if content == "formEventMapping":
            return self.error(400, "You cannot export form/event mappings for classic projects", return_fmt)
        if content == "file":
            if action == "export":
                rng = random.Random(f"{self.args.seed}-file-{params.get('record')}")
                data = rng.randbytes(self.args.file_size)
                ctype = f'application/octet-stream; name="doc_{params.get("record", "0")}.bin"'
                return 200, data, ctype, False
            if action == "import":
                if "file" not in files:
                    return self.error(400, "No valid file was uploaded", return_fmt)
                return 200, b"", "text/html; charset=utf-8", False
            if action == "delete":
                return 200, b"", "text/html; charset=utf-8", False
        return self.error(400, 'The value of the parameter "content" is not valid', return_fmt)

    def rows(self, names, rows, fmt, single=False):
        if single and fmt == "json":
            return 200, json.dumps(rows[0]).encode(), "application/json; charset=utf-8", True
        body, ctype = render_rows(names, rows, fmt)
        return 200, body.encode(), ctype, True

    def ok(self, text, fmt):
        if fmt == "json":
            return 200, text.encode(), "application/json; charset=utf-8", True
        return 200, text.encode(), "text/html; charset=utf-8", True

    def import_count(self, data, fmt, return_fmt):
        try:
            if fmt == "json":
                n = len(json.loads(data))
            elif fmt == "csv":
                n = max(0, len([l for l in data.splitlines() if l.strip()]) - 1)
            else:
                n = data.count("<item>")
        except ValueError:
            return self.error(400, "The data being imported is not formatted correctly", return_fmt)
        if return_fmt == "json":
            return 200, json.dumps({"count": n}).encode(), "application/json; charset=utf-8", True
        if return_fmt == "csv":
            return 200, f"count\n{n}\n".encode(), "text/csv; charset=utf-8", True
        body = f'<?xml version="1.0" encoding="UTF-8" ?><ids><count>{n}</count></ids>'
        return 200, body.encode(), "text/xml; charset=utf-8", True

    @staticmethod
    def error(status, message, fmt):
        body, ctype = error_body(message, fmt)
        return status, body.encode(), ctype, True


def html_page(title):
    body = (
        "<!DOCTYPE html><html><head><title>REDCap</title></head><body>"
        f"<h1>{title}</h1><p>REDCap {VERSION}</p>" + "<p>" + "lorem ipsum " * 200 + "</p></body></html>"
    )
    return body.encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Apache"
    sys_version = ""
    sim: Simulator = None  # set in main

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):
        self.serve(self.read_body())

    def do_POST(self):
        self.serve(self.read_body())

    def do_PUT(self):
        self.serve(self.read_body())

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def serve(self, body):
        path = urllib.parse.urlsplit(self.path).path
        entry = {
            "method": self.command,
            "path": self.path,
            "client_port": self.client_address[1],
            "user_agent": self.headers.get("User-Agent"),
            "expect_continue": self.headers.get("Expect", "").lower() == "100-continue",
            "request_body_bytes": len(body),
            "api": False,
            "token": None,
            "content": None,
            "action": None,
            "format": None,
            "returnFormat": None,
        }
        if API_PATH.match(path):
            entry["api"] = self.command == "POST"
            if self.command != "POST":
                status, data, ctype, compressible = 501, b"The requested method is not implemented.", "text/html", True
            else:
                params, files = parse_form(self.headers.get("Content-Type"), body)
                for key in ("token", "content", "action", "format", "returnFormat"):
                    entry[key] = params.get(key)
                try:
                    status, data, ctype, compressible = self.sim.answer(params, files)
                except Exception as e:  # a simulator bug must not hang the client
                    status, data, ctype, compressible = 500, repr(e).encode(), "text/plain", False
        elif self.command == "GET" and path in HTML_GET_PATHS:
            status, data, ctype, compressible = 200, html_page("Log in"), "text/html; charset=utf-8", True
        elif self.command == "POST" and path in HTML_POST_PATHS:
            status, data, ctype, compressible = 200, html_page("Welcome"), "text/html; charset=utf-8", True
        else:
            status, data, ctype, compressible = 404, html_page("Not Found"), "text/html; charset=utf-8", True
        self.respond(entry, status, data, ctype, compressible)

    def respond(self, entry, status, data, ctype, compressible):
        use_gzip = compressible and len(data) > 0 and accepts_gzip(self.headers.get("Accept-Encoding"))
        wire = gzip.compress(data, compresslevel=6, mtime=0) if use_gzip else data
        entry.update(
            status=status,
            body_bytes=len(data),
            wire_bytes=len(wire),
            gzip=use_gzip,
            chunked=use_gzip,
        )
        self.sim.log(entry)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("X-Content-Type-Options", "nosniff")
        if use_gzip:
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Vary", "Accept-Encoding")
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(wire)))
        if self.headers.get("Connection", "").lower() == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if use_gzip:
            step = max(1, min(MAX_CHUNK, -(-len(wire) // MIN_CHUNKS)))
            for i in range(0, len(wire), step):
                piece = wire[i : i + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(wire)
        self.wfile.flush()


def main(argv):
    args = parse_args(argv)
    Handler.sim = Simulator(args)
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
