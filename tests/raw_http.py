"""Send a request with header bytes that ordinary clients refuse to send (hostile input tests)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def raw_request(url: str, method: str, header_lines: list[bytes], body: bytes = b"", timeout: float = 10.0) -> tuple[int, dict[str, str]]:
    """Return (status, headers) of the answer to a request built byte by byte."""
    parts = urlsplit(url)
    head = [f"{method} {parts.path or '/'} HTTP/1.1".encode(), f"Host: {parts.netloc}".encode(), b"Connection: close"]
    head += header_lines
    head.append(f"Content-Length: {len(body)}".encode())
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, *lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers
