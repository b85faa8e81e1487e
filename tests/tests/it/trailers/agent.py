"""A hostile agent's client for keyswap's trailer tests: one request through keyswap's CONNECT
tunnel, over HTTP/1.1 (chunked, with trailers written by hand) or HTTP/2 (the `h2` library,
raw frames with a trailing HEADERS frame). Reads a JSON spec on stdin, prints the response as
JSON: {"status", "headers", "body", "reset"}.

Spec: proxy_port, task, token, ca_file, host, proto ("h1" | "h2"), method, path,
headers [[name, value]], chunks [str], trailers [[name, value]], expect (bool, h1 only).
"""

import base64
import json
import socket
import ssl
import sys


def tunnel(spec):
    sock = socket.create_connection(("127.0.0.1", spec["proxy_port"]), timeout=30)
    auth = base64.b64encode(f'{spec["task"]}:{spec["token"]}'.encode()).decode()
    host = spec["host"]
    sock.sendall(
        f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
        f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        more = sock.recv(1)
        if not more:
            raise SystemExit("tunnel closed")
        head += more
    if b" 200" not in head.split(b"\r\n", 1)[0]:
        raise SystemExit("tunnel refused: " + head.split(b"\r\n", 1)[0].decode())
    ctx = ssl.create_default_context(cafile=spec["ca_file"])
    ctx.set_alpn_protocols(["h2"] if spec["proto"] == "h2" else ["http/1.1"])
    tls = ctx.wrap_socket(sock, server_hostname=host)
    want = "h2" if spec["proto"] == "h2" else "http/1.1"
    if tls.selected_alpn_protocol() != want:
        raise SystemExit("ALPN did not select " + want)
    return tls


class Reader:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def fill(self):
        more = self.sock.recv(65536)
        if not more:
            raise EOFError
        self.buf += more

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self):
        status = int(self.line().split(b" ")[1])
        headers = []
        while True:
            line = self.line()
            if not line:
                return status, headers
            name, value = line.split(b":", 1)
            headers.append([name.decode().lower(), value.decode().strip()])

    def body(self, headers):
        names = dict(headers)
        if names.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    while self.line():
                        pass
                    return out
                out += self.exact(size)
                self.line()
        if "content-length" in names:
            return self.exact(int(names["content-length"]))
        try:
            while True:
                self.fill()
        except (EOFError, OSError):
            pass
        out, self.buf = self.buf, b""
        return out


def h1(spec, sock):
    lines = [f'{spec["method"]} {spec["path"]} HTTP/1.1', f'Host: {spec["host"]}',
             "Transfer-Encoding: chunked"]
    lines += [f"{n}: {v}" for n, v in spec["headers"]]
    if spec.get("expect"):
        lines.append("Expect: 100-continue")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    reader = Reader(sock)
    if spec.get("expect"):
        status, headers = reader.head()
        if status != 100:
            # A final answer before the body: the body is never sent.
            return status, headers, reader.body(headers), False
    body = b""
    for chunk in spec["chunks"]:
        data = chunk.encode()
        body += f"{len(data):x}\r\n".encode() + data + b"\r\n"
    body += b"0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in spec["trailers"]).encode() + b"\r\n"
    try:
        sock.sendall(body)
    except OSError:
        pass
    status, headers = reader.head()
    while status == 100:
        status, headers = reader.head()
    return status, headers, reader.body(headers), False


def h2(spec, sock):
    import h2.config
    import h2.connection
    import h2.events

    config = h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    head = [(":method", spec["method"]), (":path", spec["path"]), (":scheme", "https"),
            (":authority", spec["host"])] + [tuple(h) for h in spec["headers"]]
    conn.send_headers(sid, head)
    for chunk in spec["chunks"]:
        conn.send_data(sid, chunk.encode())
    if spec["trailers"]:
        conn.send_headers(sid, [tuple(t) for t in spec["trailers"]], end_stream=True)
    else:
        conn.end_stream(sid)
    sock.sendall(conn.data_to_send())
    status, headers, body, reset = 0, [], b"", False
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            break
        done = False
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                for n, v in event.headers:
                    if n == ":status":
                        status = int(v)
                    else:
                        headers.append([n, v])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                done = True
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                reset, done = True, True
            elif isinstance(event, h2.events.ConnectionTerminated):
                done = True
        sock.sendall(conn.data_to_send())
        if done:
            break
    return status, headers, body, reset


def main():
    spec = json.load(sys.stdin)
    sock = tunnel(spec)
    run = h2 if spec["proto"] == "h2" else h1
    status, headers, body, reset = run(spec, sock)
    print(json.dumps({"status": status, "headers": headers,
                      "body": body.decode("utf-8", "replace"), "reset": reset}))


main()
