"""An S3 server that ignores conditional writes: the real SeaweedFS behind a proxy that drops
If-None-Match and If-Match from every request and signs it again with the same credentials
(botocore's SigV4), as a server without conditional writes would simply not look at them.

    python s3_unconditional.py PORT UPSTREAM ACCESS_KEY SECRET_KEY

Runs in the tools' virtualenv (botocore); prints "ready" once it listens on 127.0.0.1:PORT.
"""
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

PORT, UPSTREAM, KEY, SECRET = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
UP = urlsplit(UPSTREAM)
DROPPED = {"if-none-match", "if-match", "authorization", "x-amz-date", "host", "content-length"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in DROPPED}
        request = AWSRequest(method=self.command, url=UPSTREAM + self.path, data=body, headers=headers)
        request.context["payload_signing_enabled"] = True
        S3SigV4Auth(Credentials(KEY, SECRET), "s3", "us-east-1").add_auth(request)
        prepared = request.prepare()
        connection = http.client.HTTPConnection(UP.hostname, UP.port, timeout=60)
        connection.request(self.command, self.path, body=body, headers=dict(prepared.headers))
        answer = connection.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        connection.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
