"""A web app for web.toml: answers every GET with its host's name."""
import http.server
import socket

NAME = socket.gethostname().encode()  # the lab host's name: each host has its own


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(NAME)))
        self.end_headers()
        self.wfile.write(NAME)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("", 8000), Handler).serve_forever()
