"""moto's S3 server on loopback for tests/fleet.rs, counting object GETs.

Usage: python moto_s3.py BUCKET
Prints `PORT <n>` once the server answers and BUCKET exists, then serves until killed.
`GET /_anya/gets` answers a JSON object: key ("bucket/prefix/id/version/file") -> number of
GETs of that object (listings, HEADs and bucket calls are not counted).
"""

import json
import sys
import threading
from collections import Counter
from urllib.parse import unquote

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

GETS = Counter()
LOCK = threading.Lock()


def counting(app):
    def wrapped(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/_anya/gets":
            with LOCK:
                body = json.dumps(dict(GETS)).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        query = environ.get("QUERY_STRING", "")
        parts = path.lstrip("/").split("/", 1)
        if environ.get("REQUEST_METHOD") == "GET" and len(parts) == 2 and parts[1] and "list-type" not in query:
            with LOCK:
                GETS[unquote(path.lstrip("/"))] += 1
        return app(environ, start_response)

    return wrapped


def main():
    bucket = sys.argv[1]
    app = counting(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    port = server.server_port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    print(f"PORT {port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
