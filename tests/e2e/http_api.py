"""A REST API on loopback for the `http` reader's tests: N records served by every common
pagination style, with auth, injected 429s and 5xx, malformed JSON and schema drift.

    python http_api.py PORT [--records N] [--fault-every K]

Records: {"id": i, "name": "name-i", "amount": i * 0.25, "updated_at": "2026-01-01T00:00:00Z"
+ i seconds, "tags": [...], "meta": {...}}, ordered by updated_at then id. `POST /admin/add?n=`
appends records (newer updated_at). Every K-th data request answers 429 (Retry-After: 0) or a
503/500 burst, so clients must retry."""
import base64
import json
import sys
import threading
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "test-bearer-token"
API_KEY = "test-api-key"
CLIENT_ID, CLIENT_SECRET = "client", "client-secret"
BASE = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Data:
    def __init__(self, n, fault_every):
        self.lock = threading.Lock()
        self.records = []
        self.fault_every = fault_every
        self.requests = 0
        self.faults = 0
        self.served = 0
        self.issued_tokens = set()
        self.add(n)

    def add(self, n):
        with self.lock:
            start = len(self.records)
            for i in range(start, start + n):
                self.records.append({
                    "id": i,
                    "name": f"name-{i}",
                    "amount": i * 0.25,
                    "updated_at": (BASE + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "tags": ["t", str(i % 3)],
                    "meta": {"source": "api", "n": i % 7},
                })

    def since(self, since):
        if not since:
            return self.records
        # Inclusive, as many APIs are: the client must skip what it already has.
        return [r for r in self.records if r["updated_at"] >= since]


def make_handler(data: Data):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def send(self, code, body, headers=None):
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def authorized(self, q):
            auth = self.headers.get("Authorization", "")
            path = self.path
            if path.startswith("/basic/"):
                want = "Basic " + base64.b64encode(b"user:pass").decode()
                return auth == want
            if path.startswith("/apikey/"):
                return self.headers.get("X-API-Key") == API_KEY or q.get("api_key") == API_KEY
            if path.startswith("/oauth/"):
                return auth.startswith("Bearer ") and auth[7:] in data.issued_tokens
            return auth == f"Bearer {TOKEN}"

        def fault(self):
            """Every K-th data request: a 429 or a 5xx."""
            if not data.fault_every:
                return False
            with data.lock:
                data.requests += 1
                n = data.requests
            if n % data.fault_every == 0:
                data.faults += 1
                kind = (n // data.fault_every) % 3
                if kind == 0:
                    self.send(429, {"error": "slow down"}, {"Retry-After": "0"})
                elif kind == 1:
                    self.send(503, {"error": "unavailable"})
                else:
                    self.send(500, {"error": "boom"})
                return True
            return False

        def do_POST(self):
            u = urllib.parse.urlparse(self.path)
            q = dict(urllib.parse.parse_qsl(u.query))
            if u.path == "/admin/add":
                data.add(int(q.get("n", "1")))
                return self.send(200, {"total": len(data.records)})
            if u.path == "/oauth/token":
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != \
                        ("client_credentials", CLIENT_ID, CLIENT_SECRET):
                    return self.send(401, {"error": "invalid_client"})
                tok = f"tok-{len(data.issued_tokens)}"
                data.issued_tokens.add(tok)
                return self.send(200, {"access_token": tok, "token_type": "bearer", "expires_in": 3600})
            if u.path == "/search":
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.send(401, {"error": "unauthorized"})
                recs = data.since(body.get("updated_since"))
                off, lim = int(body.get("offset", 0)), int(body.get("limit", 100))
                return self.send(200, {"results": recs[off:off + lim]})
            self.send(404, {"error": "no such endpoint"})

        def do_GET(self):
            u = urllib.parse.urlparse(self.path)
            q = dict(urllib.parse.parse_qsl(u.query))
            if u.path == "/admin/stats":
                return self.send(200, {"requests": data.requests, "faults": data.faults,
                                       "served": data.served, "total": len(data.records)})
            if u.path == "/malformed":
                return self.send(200, b'{"data": [{"id": 1}, {"id": 2')
            if not self.authorized(q):
                return self.send(401, {"error": "unauthorized"})
            if self.fault():
                return
            recs = data.since(q.get("updated_since"))
            style = u.path.rstrip("/").split("/")[-1]
            size = int(q.get("per_page", q.get("limit", 100)))
            if style == "page":
                p = int(q.get("page", 1))
                page = recs[(p - 1) * size:p * size]
                data.served += len(page)
                return self.send(200, {"data": {"items": page}, "page": p})
            if style == "offset":
                o = int(q.get("offset", 0))
                page = recs[o:o + size]
                data.served += len(page)
                return self.send(200, {"results": page})
            if style == "cursor":
                o = int(base64.urlsafe_b64decode(q["cursor"]).decode()) if q.get("cursor") else 0
                page = recs[o:o + size]
                data.served += len(page)
                nxt = base64.urlsafe_b64encode(str(o + size).encode()).decode() if o + size < len(recs) else None
                return self.send(200, {"items": page, "meta": {"next_cursor": nxt}})
            if style == "next":
                o = int(q.get("o", 0))
                page = recs[o:o + size]
                data.served += len(page)
                rest = dict(q, o=str(o + size))
                nxt = f"{u.path}?{urllib.parse.urlencode(rest)}" if o + size < len(recs) else None
                return self.send(200, {"records": page, "links": {"next": nxt}})
            if style == "link":
                p = int(q.get("page", 1))
                page = recs[(p - 1) * size:p * size]
                data.served += len(page)
                headers = {}
                if p * size < len(recs):
                    rest = dict(q, page=str(p + 1))
                    headers["Link"] = f'<http://{self.headers["Host"]}{u.path}?{urllib.parse.urlencode(rest)}>; rel="next"'
                return self.send(200, page, headers)
            if style == "drift":
                # The first page has no `extra`; later pages add it, and `?typechange=1` sends
                # `amount` as text from page 2 on.
                p = int(q.get("page", 1))
                page = [dict(r) for r in recs[(p - 1) * size:p * size]]
                if p > 1:
                    for r in page:
                        r["extra"] = f"x{r['id']}"
                        if q.get("typechange"):
                            r["amount"] = f"about {r['amount']}"
                data.served += len(page)
                return self.send(200, {"data": {"items": page}})
            self.send(404, {"error": "no such endpoint"})

    return H


def main():
    port = int(sys.argv[1])
    n = int(sys.argv[sys.argv.index("--records") + 1]) if "--records" in sys.argv else 1000
    k = int(sys.argv[sys.argv.index("--fault-every") + 1]) if "--fault-every" in sys.argv else 0
    srv = ThreadingHTTPServer(("127.0.0.1", port), make_handler(Data(n, k)))
    srv.serve_forever()


if __name__ == "__main__":
    main()
