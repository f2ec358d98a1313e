"""A minimal Iceberg REST catalog for the tests: the REST protocol (routes and JSON as the
Iceberg REST spec defines them) in front of pyiceberg's SqlCatalog, which does the real work
(metadata files, commits with requirement checks). dativo talks to it with iceberg-rust's REST
client; the tests verify with pyiceberg's RestCatalog client. Usage: PORT DB WAREHOUSE."""
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, NamespaceAlreadyExistsError, TableAlreadyExistsError
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import CommitTableRequest
from pyiceberg.table.sorting import SortOrder

port, db, warehouse = int(sys.argv[1]), sys.argv[2], sys.argv[3]
catalog = SqlCatalog("rest_backend", uri=f"sqlite:///{db}", warehouse=f"file://{warehouse}")


def load_result(t):
    return {"metadata-location": t.metadata_location,
            "metadata": json.loads(t.metadata.model_dump_json(by_alias=True, exclude_none=True)), "config": {}}


class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def send(self, code, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def parts(self):
        path = urllib.parse.urlparse(self.path).path
        return [urllib.parse.unquote(p) for p in path.strip("/").split("/")]

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def error(self, code, kind, msg):
        self.send(code, {"error": {"message": msg, "type": kind, "code": code}})

    def route(self):
        p = self.parts()
        try:
            if p == ["v1", "oauth", "tokens"] and self.command == "POST":
                # OAuth2 client credentials (the spec's token exchange): any client is let in.
                n = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(n).decode())
                if form.get("grant_type") != ["client_credentials"] or not form.get("client_secret"):
                    return self.send(400, {"error": "invalid_request"})
                return self.send(200, {"access_token": "rest-test-access-token", "token_type": "bearer",
                                       "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
            if p == ["v1", "config"]:
                return self.send(200, {"defaults": {}, "overrides": {}})
            if p[:2] == ["v1", "namespaces"] and len(p) == 2:
                if self.command == "POST":
                    b = self.body()
                    catalog.create_namespace(tuple(b["namespace"]), b.get("properties") or {})
                    return self.send(200, {"namespace": b["namespace"], "properties": b.get("properties") or {}})
                return self.send(200, {"namespaces": [list(n) for n in catalog.list_namespaces()]})
            if p[:2] == ["v1", "namespaces"] and len(p) == 3:
                ns = tuple(p[2].split("\x1f"))
                if ns not in [tuple(n) for n in catalog.list_namespaces()]:
                    return self.error(404, "NoSuchNamespaceException", f"namespace {ns} not found")
                return self.send(204 if self.command == "HEAD" else 200,
                                 None if self.command == "HEAD" else {"namespace": list(ns), "properties": {}})
            if p[:2] == ["v1", "namespaces"] and len(p) == 4 and p[3] == "tables" and self.command == "POST":
                ns = tuple(p[2].split("\x1f"))
                b = self.body()
                kw = {}
                if b.get("partition-spec"):
                    kw["partition_spec"] = PartitionSpec.model_validate(b["partition-spec"])
                if b.get("write-order"):
                    kw["sort_order"] = SortOrder.model_validate(b["write-order"])
                t = catalog.create_table(ns + (b["name"],), Schema.model_validate(b["schema"]),
                                         properties=b.get("properties") or {}, **kw)
                return self.send(200, load_result(t))
            if p[:2] == ["v1", "namespaces"] and len(p) == 5 and p[3] == "tables":
                ident = tuple(p[2].split("\x1f")) + (p[4],)
                if self.command == "POST":
                    req = CommitTableRequest.model_validate(self.body())
                    t = catalog.load_table(ident)
                    r = catalog.commit_table(t, tuple(req.requirements), tuple(req.updates))
                    return self.send(200, {"metadata-location": r.metadata_location,
                                           "metadata": json.loads(r.metadata.model_dump_json(by_alias=True, exclude_none=True))})
                t = catalog.load_table(ident)
                return self.send(204 if self.command == "HEAD" else 200, None if self.command == "HEAD" else load_result(t))
            return self.error(404, "NotFound", f"no route {self.command} {self.path}")
        except NoSuchTableError as e:
            return self.error(404, "NoSuchTableException", str(e))
        except (NamespaceAlreadyExistsError, TableAlreadyExistsError) as e:
            return self.error(409, "AlreadyExistsException", str(e))
        except CommitFailedException as e:
            return self.error(409, "CommitFailedException", str(e))
        except Exception as e:  # noqa: BLE001
            return self.error(500, type(e).__name__, repr(e))

    do_GET = do_POST = do_HEAD = do_DELETE = route


ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
