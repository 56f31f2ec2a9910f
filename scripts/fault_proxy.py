#!/usr/bin/env python3
"""A small HTTP/1.1 proxy on loopback that counts what passes and injects the
faults a test asks for, in front of moto or nginx.

    python fault_proxy.py LISTEN_PORT UPSTREAM_PORT

Each request goes upstream on its own connection; the client's connection is
kept alive. The Host header is passed unchanged, so signatures still verify.
Control requests (never forwarded):

    POST /__proxy__/faults   body: one fault per line, "METHOD ACTION"
                             (METHOD is GET, PUT, ... or *); each fault is used
                             once, by the next request whose method matches:
        status:503           answer 503 with an S3 SlowDown error, not forwarded
        status:500|429|...   the same with that status
        reset                forward, send half the response, then reset the connection
        short                forward, send the headers and half the body, then close
        slow:SECONDS         wait that long before answering
    GET  /__proxy__/stats    JSON: requests by method, bytes received from clients
                             (request bodies) and sent to them (response bodies)
    POST /__proxy__/reset    clear the statistics and the faults
"""
import asyncio
import json
import socket
import struct
import sys

faults = []
stats = {"requests": {}, "request_bytes": 0, "response_bytes": 0, "ranges": []}


def clear():
    faults.clear()
    stats.update(requests={}, request_bytes=0, response_bytes=0, ranges=[])


async def read_message_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return head, lines[0], headers


def respond(writer, status, body=b"", reason="Error"):
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                 f"Content-Type: application/xml\r\n\r\n".encode() + body)


def take_fault(method):
    for i, (want, action) in enumerate(faults):
        if want in ("*", method):
            del faults[i]
            return action
    return None


async def forward(upstream_port, head, body):
    reader, writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    lines = head.decode("latin-1").split("\r\n")
    kept = [l for l in lines[1:] if l and not l.lower().startswith(("connection:", "keep-alive:", "proxy-connection:"))]
    writer.write(("\r\n".join([lines[0]] + kept + ["Connection: close", "", ""])).encode("latin-1") + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    split = response.index(b"\r\n\r\n") + 4
    lines = response[:split].decode("latin-1").split("\r\n")
    body = response[split:]
    chunked = any(l.lower().startswith("transfer-encoding:") and "chunked" in l.lower() for l in lines)
    if chunked:
        body = dechunk(body)
    has_length = any(l.lower().startswith("content-length:") for l in lines)
    kept = [l for l in lines[1:] if l and not l.lower().startswith(("connection:", "keep-alive:", "transfer-encoding:"))]
    if chunked or not has_length:
        kept.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([lines[0]] + kept + ["", ""])).encode("latin-1"), body


def dechunk(data):
    out, i = bytearray(), 0
    while True:
        end = data.index(b"\r\n", i)
        size = int(data[i:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2:end + 2 + size]
        i = end + 2 + size + 2


async def handle(client_reader, client_writer, upstream_port):
    try:
        while True:
            try:
                head, request_line, headers = await read_message_head(client_reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            method, target = request_line.split(" ")[:2]
            length = int(headers.get("content-length", "0"))
            if headers.get("expect", "").lower() == "100-continue":
                client_writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await client_reader.readexactly(length) if length else b""
            if target.startswith("/__proxy__/"):
                if target == "/__proxy__/faults":
                    for line in body.decode().splitlines():
                        if line.strip():
                            want, action = line.split(None, 1)
                            faults.append((want.upper(), action.strip()))
                    respond(client_writer, 200, b"ok", "OK")
                elif target == "/__proxy__/stats":
                    respond(client_writer, 200, json.dumps(stats).encode(), "OK")
                elif target == "/__proxy__/reset":
                    clear()
                    respond(client_writer, 200, b"ok", "OK")
                else:
                    respond(client_writer, 404)
                await client_writer.drain()
                continue
            stats["requests"][method] = stats["requests"].get(method, 0) + 1
            stats["request_bytes"] += length
            if "range" in headers:
                stats["ranges"].append(headers["range"])
            fault = take_fault(method)
            if fault and fault.startswith("slow:"):
                await asyncio.sleep(float(fault.split(":", 1)[1]))
                fault = None
            if fault and fault.startswith("status:"):
                status = int(fault.split(":", 1)[1])
                code = "SlowDown" if status == 503 else "InternalError"
                respond(client_writer, status, f"<?xml version=\"1.0\"?><Error><Code>{code}</Code>"
                        f"<Message>injected by the test proxy</Message></Error>".encode())
                await client_writer.drain()
                continue
            response_head, response_body = await forward(upstream_port, head, body)
            if fault == "reset":
                client_writer.write(response_head + response_body[: len(response_body) // 2])
                await client_writer.drain()
                sock = client_writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client_writer.transport.abort()
                return
            if fault == "short":
                client_writer.write(response_head + response_body[: len(response_body) // 2])
                await client_writer.drain()
                client_writer.close()
                return
            stats["response_bytes"] += len(response_body)
            client_writer.write(response_head + response_body)
            await client_writer.drain()
            if headers.get("connection", "").lower() == "close":
                client_writer.close()
                return
    except ConnectionError:
        return


async def main():
    port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    server = await asyncio.start_server(lambda r, w: handle(r, w, upstream_port), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
