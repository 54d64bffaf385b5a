"""The HTTP API and the page, over :mod:`ganime.colorize` only (standard library ``http.server``).

Routes::

    GET  /                 the page (static/index.html, app.js, style.css; no build step, no CDN)
    GET  /api/health       {"status", "version", "device", "models", "limits"}
    GET  /api/models       {"default", "models": [{"name", "kind", "hints", "needs_style", ...}]}
    POST /api/colorize     multipart: image (required), hints (RGBA PNG), method, style -> image/png

Bad input always gets a 4xx with ``{"error": "one sentence"}``, never a 5xx: 400 for a missing field,
a non-image, a corrupt image or a wrong method name; 413 for an upload over the byte limit (refused
from Content-Length before the body is read) or an image whose header claims more pixels than the
limit (refused before decoding); 404 / 405 for unknown paths and verbs. A full server answers 503
with Retry-After: that is a load answer, not a verdict on the input.

Memory is bounded by a :class:`Gate`: at most ``Limits.max_active`` requests read, decode, colour and send
at once (the model itself is serialised by the Colorizer's lock), at most ``Limits.max_queue`` more
wait for a turn without having sent their bodies, and the rest are turned away with 503.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import email.utils
import io
import ipaddress
import json
import math
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from PIL import Image

from ganime import __version__
from ganime.config import DEFAULT_MAX_SIZE
from ganime.errors import GanimeError, InputError

STATIC = Path(__file__).parent / "static"
#: URL path -> (file under static/, content type). Nothing else is served from disk.
STATIC_ROUTES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
API_GET = ("/api/health", "/api/models")
API_POST = ("/api/colorize",)
# The 'orientation' field of /api/colorize: apply the upload's EXIF orientation tag (as `ganime colorize`
# does), or colour the pixels as stored, which is what a browser that ignores the tag shows (headless
# Chromium does for WebP): the page sends 'stored' then, so hints land where they were painted.
ORIENTATIONS = ("exif", "stored")
#: Sent with every response: no sniffing, no framing, nothing loaded from elsewhere.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self' blob:; frame-ancestors 'none'",
}
#: Sent with every answer, the server's own 503s included: never cached, and the security headers.
ALWAYS_HEADERS = {"Cache-Control": "no-store", **SECURITY_HEADERS}
#: Control characters (and the backslash) in a log line as escapes, as http.server's own log_message
#: writes them: a request line is the client's text, and an escape sequence in it would reach the terminal.
LOG_ESCAPES = str.maketrans({c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa0)]} | {ord("\\"): "\\\\"})


class _TooSlow(Exception):
    """A client moving a body slower than the server's minimum rate (see ``Handler._at_rate``)."""


class HTTPError(Exception):
    """An answer other than 200: a status, one sentence for ``{"error": ...}`` and extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Limits:
    """What one request may cost. Defaults suit a laptop; ``ganime serve`` exposes the first four."""

    #: Largest request body (the whole multipart upload) in bytes.
    max_upload_bytes: int = 20 * 1024 * 1024
    #: Largest image (width x height) decoded; a bigger header is refused before decoding.
    max_pixels: int = 4096 * 4096
    #: Requests reading, decoding, colouring and sending at once (each holds up to a body and a few images).
    max_active: int = 2
    #: Requests waiting for a turn (they have not sent their bodies yet); more get 503.
    max_queue: int = 16
    #: Seconds a socket may stay silent before the connection is dropped (slow or stalled clients), and
    #: that a request's head (request line and headers) may take to arrive whole.
    socket_timeout: float = 30.0
    #: Slowest average upload accepted, in bytes/s: after ``socket_timeout`` s a body must have arrived at
    #: this rate (so all of it within ``socket_timeout`` plus its length at this rate; 20 MB: 11 minutes), or
    #: 408. Without it a client trickling a byte now and then would hold one of the ``max_active`` slots for
    #: as long as it liked.
    min_upload_rate: float = 32 * 1024
    #: Slowest average download accepted, in bytes/s: after ``socket_timeout`` s an answer must have been taken
    #: at this rate, or the connection is dropped. (One ``sendall`` gave a whole answer ``socket_timeout``, so a
    #: client reading slower than its size / 30 s, 350 KB/s for 10 MB, lost its end.) A slot is held until the
    #: answer is out, so this bounds how long a slow reader keeps it, as ``min_upload_rate`` does for uploads.
    min_download_rate: float = 32 * 1024
    #: Open connections at once (each has a thread until it closes or stays silent for socket_timeout);
    #: more are answered 503 and closed at once.
    max_connections: int = 64


class Gate:
    """Bounded admission: ``max_active`` inside at once, ``max_queue`` waiting, the rest refused."""

    def __init__(self, max_active: int, max_queue: int):
        self._slots = threading.BoundedSemaphore(max_active)
        self._lock = threading.Lock()
        self._admitted = 0
        self.capacity = max_active + max_queue

    def enter(self) -> bool:
        """Wait for a turn; False at once (without waiting) when the queue is full."""
        with self._lock:
            if self._admitted >= self.capacity:
                return False
            self._admitted += 1
        self._slots.acquire()
        return True

    def leave(self) -> None:
        self._slots.release()
        with self._lock:
            self._admitted -= 1


@dataclass
class WebModel:
    """One entry of ``/api/models``: a name and a function (sketch, hints, style) -> RGB PIL image."""

    name: str
    kind: str  # "colorizer" or "style-transfer"
    run: Callable[..., Image.Image]
    hints: bool = False
    needs_style: bool = False
    description: str = ""
    info: dict = field(default_factory=dict)

    def public(self) -> dict:
        return {"name": self.name, "kind": self.kind, "hints": self.hints, "needs_style": self.needs_style,
                "description": self.description, **self.info}


def colorizer_model(name: str, colorizer) -> WebModel:
    """Wrap a :class:`ganime.colorize.Colorizer` (thread-safe: it serialises inference itself)."""
    hints = bool(colorizer.hint_channels)

    def run(sketch, hints_im=None, style=None, **options):  # options: flatten, background (per request)
        return colorizer(sketch, hints_im, **options)

    what = f"{colorizer.size}px model"
    info = {"method": colorizer.method, "size": colorizer.size,
            "source": Path(colorizer.source).name if colorizer.source else ""}
    if colorizer.flatten is not None:  # a colour layer under the lines, evened out by this much (--flatten)
        info["flatten"] = colorizer.flatten
    info["background"] = colorizer.background
    return WebModel(name, "colorizer", run, hints=hints,
                    description=what + (", takes colour hints" if hints else ""), info=info)


def models_from_checkpoints(checkpoints: list, device: str = "auto", style: bool = True,
                            fast: str | None = None, background: str = "model",
                            max_size: int | None = DEFAULT_MAX_SIZE, flatten: float | None = None) -> dict[str, WebModel]:
    """Load each checkpoint as a colorizer (the first is the default), plus style transfer when available.

    Names are the checkpoint's method (``pix2pix``, ``cyclegan``), numbered when a method repeats.
    ``fast`` is the colorizers' inference path (:class:`ganime.colorize.Colorizer`; ``ganime serve
    --fast``); ``flatten`` sets the colour flattening of those with a colour layer (``--flatten``).
    """
    from ganime.colorize import Colorizer

    models: dict[str, WebModel] = {}
    for ckpt in checkpoints:
        c = Colorizer.from_checkpoint(ckpt, device, fast=fast, background=background, max_size=max_size,
                                      flatten=flatten)
        name, n = c.method, 2
        while name in models:
            name, n = f"{c.method}-{n}", n + 1
        models[name] = colorizer_model(name, c)
    if style:
        st = style_transfer_model(getattr(device, "type", device))
        if st is not None:
            models[st.name] = st
    return models


def style_transfer_model(device: str = "auto") -> WebModel | None:
    """Fast arbitrary style transfer (Ghiasi et al.) when ``ganime.methods.style_transfer`` and its
    optional dependencies are importable; None otherwise. It colours the sketch after a ``style`` image."""
    try:
        from ganime.methods import style_transfer
    except ImportError:
        return None
    try:
        st = style_transfer.make_style_transfer("fast", device=device)
    except (GanimeError, ImportError, OSError, AttributeError):
        return None
    lock = threading.Lock()

    def run(sketch, hints_im=None, style=None):
        if hints_im is not None:
            raise InputError("style transfer does not take colour hints; it follows the 'style' image")
        if style is None:
            raise InputError("style transfer needs a 'style' field: a colour image whose look to copy")
        with lock:
            return st(sketch, style)

    return WebModel("style-fast", "style-transfer", run, needs_style=True,
                    description="fast style transfer (Ghiasi et al. 2017): colours after a style image")


# ---- request bodies -----------------------------------------------------------------------------

def header_param(value: str, param: str, header: str = "content-type") -> str | None:
    """A parameter of a MIME header value (``boundary`` of Content-Type, ``name`` of Content-Disposition)."""
    msg = email.message.Message()
    msg[header] = value
    v = msg.get_param(param, header=header)
    if isinstance(v, tuple):  # RFC 2231 encoded
        v = email.utils.collapse_rfc2231_value(v)
    return v


def parse_multipart(body: bytes, boundary: str) -> dict[str, tuple[str | None, bytes]]:
    """``multipart/form-data`` -> {field name: (filename or None, bytes)} (RFC 7578).

    Small and strict: the body is already in memory (bounded by the upload limit); a missing closing
    delimiter, a part without a name or a field given twice is a 400.
    """
    try:  # (an RFC 2231 encoded boundary may hold any character; a valid one is ASCII)
        delim = b"\r\n--" + boundary.encode("latin-1")
    except UnicodeEncodeError:
        boundary = ""
    if not boundary or len(boundary) > 200:
        raise HTTPError(400, "multipart body has no valid boundary")
    segments = (b"\r\n" + body).split(delim)
    fields: dict[str, tuple[str | None, bytes]] = {}
    closed = False
    for seg in segments[1:]:  # segments[0] is the preamble
        if seg.startswith(b"--"):
            closed = True
            break
        eol = seg.find(b"\r\n")  # transport padding (spaces) may follow a delimiter
        if eol < 0 or seg[:eol].strip(b" \t"):
            raise HTTPError(400, "malformed multipart body (bad delimiter line)")
        seg = seg[eol + 2:]
        if seg.startswith(b"\r\n"):
            head, data = b"", seg[2:]
        else:
            end = seg.find(b"\r\n\r\n")
            if end < 0:
                raise HTTPError(400, "malformed multipart body (part headers do not end)")
            head, data = seg[:end], seg[end + 4:]
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head + b"\r\n\r\n")
        disp = headers.get("content-disposition", "")
        name = header_param(disp, "name", "content-disposition") if disp else None
        if not name:
            raise HTTPError(400, "malformed multipart body (a part has no field name)")
        if name in fields:
            raise HTTPError(400, f"field '{name}' was sent twice")
        fields[name] = (header_param(disp, "filename", "content-disposition"), data)
    if not closed:
        raise HTTPError(400, "malformed multipart body (no closing boundary; was the upload cut short?)")
    return fields


def decode_image(data: bytes, label: str, max_pixels: int, keep_alpha: bool = False,
                 exif_orientation: bool = True) -> Image.Image:
    """Upload bytes -> PIL image with :func:`ganime.imageio.decode_image`'s checks and messages.

    An image whose header claims more than ``max_pixels`` is refused before decoding (HTTPError 413);
    every other problem (empty, not an image, truncated, corrupt) is a one-line InputError naming
    ``label``. ``keep_alpha`` returns RGBA (hint strokes) instead of RGB composited on white;
    ``exif_orientation=False`` ignores the EXIF orientation tag.
    """
    from ganime.imageio import ImageTooLarge
    from ganime.imageio import decode_image as decode

    try:
        return decode(data, label, max_pixels, keep_alpha, exif_orientation)
    except ImageTooLarge as e:
        raise HTTPError(413, str(e).replace("over the limit", "over this server's limit")) from None


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ---- the server ---------------------------------------------------------------------------------

class GanimeServer(ThreadingHTTPServer):
    """A threaded HTTP server holding the loaded models, the limits and the admission gate."""

    daemon_threads = True
    request_queue_size = 64
    # Refuse to share a port with another server; the CLI turns "in use" into one line.
    allow_reuse_address = False

    def __init__(self, address, models: dict[str, WebModel], limits: Limits | None = None,
                 device: str = "cpu", log_line: Callable[[str], None] | None = None):
        if not models:
            raise InputError("no models to serve")
        self.models = models
        self.default_model = next(iter(models))
        self.limits = limits or Limits()
        self.device = device
        self.gate = Gate(self.limits.max_active, self.limits.max_queue)
        self.log_line = log_line or (lambda line: print(line, file=sys.stderr, flush=True))
        self._connections = 0
        self._connections_lock = threading.Lock()
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        """A thread per connection, up to ``Limits.max_connections``; past that a 503 at once (the request
        is not read), so idle or stalled connections cannot pile up threads without bound."""
        with self._connections_lock:
            full = self._connections >= self.limits.max_connections
            if not full:
                self._connections += 1
        if not full:
            return super().process_request(request, client_address)
        body = json.dumps({"error": "too many open connections; try again in a few seconds"}).encode()
        try:
            headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **ALWAYS_HEADERS,
                       "Retry-After": "2", "Connection": "close"}
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\n"
                            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n" + body)
        except OSError:
            pass
        self.log_line(f"{client_address[0]} - refused: {self.limits.max_connections} connections open")
        self.shutdown_request(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections -= 1

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"

    def loopback_only(self) -> bool:
        try:
            return ipaddress.ip_address(self.server_address[0]).is_loopback
        except ValueError:
            return False


class HeadReader(socket.SocketIO):
    """The handler's socket reader: while ``deadline`` is set (a request head is being read) no recv waits
    past it, so a head trickled a byte now and then, never silent for the socket timeout, cannot hold its
    connection and thread for ever (slowloris: ``max_connections`` of them would shut everyone out)."""

    def __init__(self, sock: socket.socket, timeout: float):
        super().__init__(sock, "rb")
        self.timeout, self.deadline = timeout, None

    def readinto(self, b):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request head not complete in time")
            self._sock.settimeout(min(self.timeout, left))
        return super().readinto(b)


def make_server(models: dict[str, WebModel], host: str = "127.0.0.1", port: int = 8000,
                limits: Limits | None = None, device: str = "cpu",
                log_line: Callable[[str], None] | None = None) -> GanimeServer:
    """Bind (``port`` 0 picks a free one) without serving yet; call ``serve_forever()`` on the result."""
    return GanimeServer((host, port), models, limits, device, log_line)


class Handler(BaseHTTPRequestHandler):
    server: GanimeServer
    server_version = f"ganime/{__version__}"
    protocol_version = "HTTP/1.1"

    def setup(self):
        self.timeout = self.server.limits.socket_timeout
        super().setup()
        self.rfile.close()  # read through a HeadReader instead (the socket stays open)
        self._head = HeadReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._head)

    def handle_one_request(self):
        """A request's head (request line and headers) must arrive whole within the socket timeout."""
        self._head.deadline = time.monotonic() + self.timeout
        super().handle_one_request()

    def parse_request(self):  # (called once the request line is in; reads the headers)
        try:
            return super().parse_request()
        finally:
            self._head.deadline = None
            self.connection.settimeout(self.timeout)

    # -- plumbing ---------------------------------------------------------------------------------
    def log_message(self, format, *args):  # http.server's own messages (malformed request lines ...)
        self.server.log_line(f"{self.client_address[0]} - {format % args}".translate(LOG_ESCAPES))

    def log_request(self, code="-", size="-"):  # we log once per request in _finish instead
        pass

    def send_error(self, code, message=None, explain=None):
        """What http.server refuses itself (a malformed request line, headers over its limits) answered in
        JSON like the rest; a verb it has no ``do_`` method for is a 405 like PUT's, and HTTP/2 a 400:
        no 5xx for bad input."""
        if code == HTTPStatus.NOT_IMPLEMENTED and self.command:  # e.g. TRACE, or 'get'
            return self._other_verb()
        if code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            code, message = HTTPStatus.BAD_REQUEST, f"{message}; this server speaks HTTP/1.1"
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # (the default until a request line parses: send a status line)
            self.request_version = self.protocol_version
        self._json(code, {"error": message or HTTPStatus(code).phrase})

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**ALWAYS_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._status, self._size = status, len(body)
        if self.command != "HEAD":
            self._write_body(body)

    def _at_rate(self, start: float, done: int, rate: float, io):
        """``io()``, one read or write of a body begun at ``start`` with ``done`` bytes moved so far, under the
        slow-client rule of uploads and answers alike: after socket_timeout's grace, ``rate`` bytes/s on average.
        Raises :class:`_TooSlow` past that, and socket.timeout when the client is silent for socket_timeout."""
        deadline = start + self.server.limits.socket_timeout + done / rate
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise socket.timeout
            self.connection.settimeout(min(self.timeout, left))
            return io()
        except socket.timeout:
            if time.monotonic() < deadline:
                raise  # silent for socket_timeout
            raise _TooSlow from None

    def _write_body(self, body: bytes) -> None:
        """Send ``body`` while the client keeps taking it: after socket_timeout's grace it must have taken it
        at min_download_rate on average (as _read_body asks of uploads), or the connection is dropped; the
        client sees an answer shorter than its Content-Length. A client silent for socket_timeout is dropped."""
        rate = self.server.limits.min_download_rate
        start, sent, view = time.monotonic(), 0, memoryview(body)
        try:
            while sent < len(body):
                try:
                    # send, not sendall: sendall's timeout is for the whole answer, not for each write
                    sent += self._at_rate(start, sent, rate, lambda: self.connection.send(view[sent : sent + (1 << 16)]))
                except _TooSlow:
                    raise socket.timeout(f"answer too slow: {sent:,} of {len(body):,} bytes taken in "
                                         f"{time.monotonic() - start:.0f} s (this server needs "
                                         f"{rate / 1024:.3g} KB/s)") from None
        finally:
            self._size = sent
            self.connection.settimeout(self.timeout)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, (json.dumps(obj) + "\n").encode(), "application/json", headers)

    def _dispatch(self, fn) -> None:
        self._status, self._size, self._note, t0 = 0, 0, "", time.perf_counter()
        self._body_read = False
        try:
            self._check_host()
            fn()
        except (HTTPError, InputError) as e:
            err = e if isinstance(e, HTTPError) else HTTPError(400, str(e))
            self._unread_body_guard()
            try:
                self._json(err.status, {"error": err.message}, err.headers)
            except OSError:  # the client left (e.g. mid-upload) before hearing why
                self.close_connection = True
            self._note = err.message
        except (ConnectionError, socket.timeout) as e:
            self.close_connection = True
            self._note = f"connection lost: {str(e) or type(e).__name__}"
        except Exception as e:  # a bug, not bad input: log it, answer 500 in JSON
            self.server.log_line(traceback.format_exc().rstrip())
            try:
                self.close_connection = True
                self._json(500, {"error": f"internal error ({type(e).__name__}); see the server log"})
            except OSError:
                pass
            self._note = repr(e)
        dt = time.perf_counter() - t0
        note = f" - {self._note}" if self._note else ""  # (an error, or a connection lost: also after a 200)
        self.server.log_line(f'{self.client_address[0]} "{self.command} {self.path}" '
                             f"{self._status or '-'} {self._size}B {dt:.2f}s{note}".translate(LOG_ESCAPES))

    def _unread_body_guard(self) -> None:
        """Answering before a request body was read: close the connection after the answer (the body would
        be read as the next request). A GET or HEAD has none unless it announces one."""
        if self._body_read:
            return
        raw = (self.headers.get("Content-Length") or "").strip()
        if self.command in ("GET", "HEAD") and raw in ("", "0") and not self.headers.get("Transfer-Encoding"):
            return
        try:
            length = max(0, int(raw or 0))
        except ValueError:
            length = 0
        if self.headers.get("Transfer-Encoding"):  # chunked: length unknown, drain up to the limit
            length = self.server.limits.max_upload_bytes
        self._refuse_body(length)

    def handle_expect_100(self):
        """Say "100 Continue" only to uploads we mean to read; others get their 4xx straight away."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if self._route() in API_POST and self.command == "POST" and 0 <= length <= self.server.limits.max_upload_bytes:
            return super().handle_expect_100()
        return True

    def _check_host(self) -> None:
        """One Host header (two, or none in HTTP/1.1, are a 400, RFC 7230 section 5.4: only the first was checked,
        and a proxy in front may read the other); on a loopback address, only loopback names (a guard against
        DNS rebinding)."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            raise HTTPError(400, f"the request has {len(hosts)} Host headers; send one")
        if not hosts and self.request_version == "HTTP/1.1":  # RFC 7230 section 5.4 too (HTTP/1.0 may omit it)
            raise HTTPError(400, "an HTTP/1.1 request needs a Host header")
        if not self.server.loopback_only():
            return
        host = (hosts[0] if hosts else "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]")
        try:  # an address, not a name that starts like one (127.0.0.1.example.com is anyone's)
            loopback = ipaddress.ip_address(name).is_loopback
        except ValueError:
            loopback = name == "localhost"
        if not loopback:
            raise HTTPError(403, f"this server only answers to localhost, not to Host {host!r}")

    def _route(self) -> str:
        return urlsplit(self.path).path

    def _method_not_allowed(self, allowed: str):
        raise HTTPError(405, f"{self.command} is not allowed on {self._route()}; use {allowed}",
                        {"Allow": allowed})

    # -- verbs ------------------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch(self._get)

    def do_HEAD(self):
        self._dispatch(self._get)

    def do_POST(self):
        self._dispatch(self._post)

    def _other_verb(self):
        self._dispatch(self._other)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_verb

    def _other(self):
        self.close_connection = True  # we do not read bodies of verbs we do not take
        route = self._route()
        if route in API_POST:
            self._method_not_allowed("POST")
        if route in API_GET or route in STATIC_ROUTES:
            self._method_not_allowed("GET, HEAD")
        if self.command == "CONNECT" or self.path == "*":  # host:port or '*': the whole server, not a path
            proxy = " (it is not a proxy)" if self.command == "CONNECT" else ""
            raise HTTPError(405, f"{self.command} is not allowed on this server{proxy}; it answers GET, HEAD and POST",
                            {"Allow": "GET, HEAD, POST"})
        raise HTTPError(404, f"no such path: {route}")

    def _get(self):
        self._unread_body_guard()  # (a GET or HEAD with a body, which we do not read)
        route = self._route()
        if route == "/api/health":
            s = self.server
            self._json(200, {"status": "ok", "version": __version__, "device": s.device,
                             "models": list(s.models), "default": s.default_model,
                             "limits": {"max_upload_bytes": s.limits.max_upload_bytes,
                                        "max_pixels": s.limits.max_pixels}})
        elif route == "/api/models":
            self._json(200, {"default": self.server.default_model,
                             "models": [m.public() for m in self.server.models.values()]})
        elif route in STATIC_ROUTES:
            name, ctype = STATIC_ROUTES[route]
            self._send(200, (STATIC / name).read_bytes(), ctype)
        elif route in API_POST:
            self._method_not_allowed("POST")
        else:
            raise HTTPError(404, f"no such path: {route}")

    def _post(self):
        route = self._route()
        if route not in API_POST:
            self.close_connection = True
            if route in API_GET or route in STATIC_ROUTES:
                self._method_not_allowed("GET, HEAD")
            raise HTTPError(404, f"no such path: {route}")
        length = self._content_length()
        if not self.server.gate.enter():
            self._refuse_body(length)
            raise HTTPError(503, "the server is busy; try again in a few seconds", {"Retry-After": "2"})
        try:
            self._colorize(length)
        finally:
            self.server.gate.leave()

    # -- POST /api/colorize -----------------------------------------------------------------------
    def _content_length(self) -> int:
        limit = self.server.limits.max_upload_bytes
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HTTPError(411, "send the upload with a Content-Length (chunked uploads are not accepted)")
        raws = [v.strip(" \t") for v in self.headers.get_all("Content-Length") or []]
        if not raws:
            self.close_connection = True
            raise HTTPError(411, "the upload has no Content-Length")
        raw = raws[0] if len(set(raws)) == 1 else ", ".join(raws)
        if not (raw.isascii() and raw.isdigit()):  # not int()'s '+12' or '1_2', nor two lengths that differ
            self.close_connection = True
            raise HTTPError(400, f"bad Content-Length {raw!r}")
        digits = raw.lstrip("0")
        if len(digits) > 18:  # over any limit; and int() refuses over 4300 digits (a ValueError: a 500)
            self._refuse_body(limit)
            raise HTTPError(413, f"upload is a {len(digits):,}-digit number of bytes, over this server's limit "
                                 f"of {limit:,} bytes")
        length = int(raw)
        if length > limit:
            self._refuse_body(length)
            raise HTTPError(413, f"upload is {length:,} bytes, over this server's limit of {limit:,} bytes")
        return length

    def _refuse_body(self, length: int) -> None:
        """We answer without reading the body: close afterwards, and drain a little so the client sees
        the answer instead of a reset (see finish())."""
        self.close_connection = True
        self._body_read = True  # (or rather: it never will be)
        self._drain = min(length, 64 * 2**20)

    def finish(self):
        drain = getattr(self, "_drain", 0)
        try:
            super().finish()
            if drain:
                # Half-close, then swallow what the client is still sending (bounded in bytes and
                # time): closing with unread data would reset the connection and lose our answer.
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(1.0)
                deadline = time.monotonic() + 3.0
                while drain > 0 and time.monotonic() < deadline:
                    chunk = self.connection.recv(min(drain, 1 << 16))
                    if not chunk:
                        break
                    drain -= len(chunk)
        except OSError:
            pass

    def _read_body(self, length: int) -> bytes:
        limits = self.server.limits
        limit = limits.max_upload_bytes
        start = time.monotonic()
        buf = bytearray()
        while len(buf) < length:
            # After socket_timeout's grace the body must keep up with min_upload_rate: a deadline from the
            # announced length alone let a trickle hold its slot for that long (20 MB: 11 minutes).
            try:
                # read1: what has arrived (one recv), so the deadline is checked however slowly bytes come
                chunk = self._at_rate(start, len(buf), limits.min_upload_rate,
                                      lambda: self.rfile.read1(min(1 << 16, length - len(buf))))
            except _TooSlow:
                self.close_connection = True
                raise HTTPError(408, f"upload too slow: {len(buf):,} of {length:,} bytes in "
                                     f"{time.monotonic() - start:.0f} s (this server needs "
                                     f"{limits.min_upload_rate / 1024:.3g} KB/s)") from None
            if not chunk:
                self.close_connection = True
                raise HTTPError(400, f"upload ended after {len(buf):,} of {length:,} bytes")
            buf += chunk
            if len(buf) > limit:  # cannot happen with an honest Content-Length; enforced regardless
                self.close_connection = True
                raise HTTPError(413, f"upload is over this server's limit of {limit:,} bytes")
        self.connection.settimeout(self.timeout)
        self._body_read = True
        return bytes(buf)

    @staticmethod
    def _options(fields: dict, name: str, model: WebModel) -> dict:
        """The optional per-request fields ``flatten`` (a number of pixels, for a model with a colour
        layer) and ``background`` (model or paper, for a colorizer), checked: 400 for anything else."""
        from ganime.colorize import BACKGROUNDS
        from ganime.config import MAX_SMOOTHING_SIGMA

        text = {k: fields[k][1].decode("utf-8", "replace").strip() for k in ("flatten", "background")
                if k in fields and fields[k][1].strip()}
        options: dict = {}
        if "background" in text:
            if model.kind != "colorizer":
                raise HTTPError(400, f"method {name!r} takes no 'background' field")
            if text["background"] not in BACKGROUNDS:
                raise HTTPError(400, f"background {text['background'][:40]!r}: choose one of {', '.join(BACKGROUNDS)}")
            options["background"] = text["background"]
        if "flatten" in text:
            if "flatten" not in model.info:
                raise HTTPError(400, f"method {name!r} has no colour layer to flatten; send no 'flatten' field")
            try:
                value = float(text["flatten"])
            except ValueError:
                value = math.nan
            if not 0 <= value <= MAX_SMOOTHING_SIGMA:  # also refuses nan and inf
                raise HTTPError(400, f"flatten {text['flatten'][:40]!r}: give a number of pixels from 0 to "
                                     f"{MAX_SMOOTHING_SIGMA}")
            options["flatten"] = value
        return options

    def _colorize(self, length: int) -> None:
        s = self.server
        ctype = self.headers.get("Content-Type", "")
        body = self._read_body(length)
        if not ctype.lower().startswith("multipart/form-data"):
            raise HTTPError(415, "send a multipart/form-data upload with an 'image' field "
                                 "(e.g. curl -F image=@sketch.png)")
        fields = parse_multipart(body, header_param(ctype, "boundary") or "")
        del body
        if "image" not in fields:
            raise HTTPError(400, "missing the 'image' field (the sketch to colour)")
        name = fields.get("method", (None, b""))[1].decode("utf-8", "replace").strip() or s.default_model
        model = s.models.get(name)
        if model is None:
            raise HTTPError(400, f"unknown method {name[:40]!r}: choose one of {', '.join(s.models)}")
        limit = s.limits.max_pixels
        orientation = fields.get("orientation", (None, b""))[1].decode("utf-8", "replace").strip() or "exif"
        if orientation not in ORIENTATIONS:
            raise HTTPError(400, f"orientation {orientation[:40]!r}: choose one of {', '.join(ORIENTATIONS)}")
        sketch = decode_image(fields["image"][1], "image", limit, exif_orientation=orientation == "exif")
        hints = style = None
        if "hints" in fields and fields["hints"][1]:
            if not model.hints:
                raise HTTPError(400, f"method {name!r} does not take colour hints; send no 'hints' field"
                                     + (f" or choose one of {', '.join(n for n, m in s.models.items() if m.hints)}"
                                        if any(m.hints for m in s.models.values()) else ""))
            hints = decode_image(fields["hints"][1], "hints", limit, keep_alpha=True)
            if hints.size != sketch.size:
                raise HTTPError(400, f"hints are {hints.width}x{hints.height} but the image is "
                                     f"{sketch.width}x{sketch.height}; paint hints at the image's size")
        if "style" in fields and fields["style"][1]:
            if not model.needs_style:
                raise HTTPError(400, f"method {name!r} takes no 'style' image")
            style = decode_image(fields["style"][1], "style", limit)
        elif model.needs_style:
            raise HTTPError(400, f"method {name!r} needs a 'style' field: a colour image whose look to copy")
        out = model.run(sketch, hints, style, **self._options(fields, name, model))
        if out.size != sketch.size:  # every model promises this; a mismatch is a bug, not bad input
            raise RuntimeError(f"{name} returned {out.size}, expected {sketch.size}")
        headers = {"X-Ganime-Method": name}
        from ganime.colorize import looks_coloured

        if model.kind == "colorizer" and looks_coloured(sketch):
            headers["X-Ganime-Warning"] = "the image looks like a colour picture, not line art; the result may be poor"
        self._send(200, png_bytes(out.convert("RGB")), "image/png", headers)
