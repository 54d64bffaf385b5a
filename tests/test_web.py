"""The web API (ganime serve): every endpoint, every bad input (4xx + JSON, never 5xx), limits,
concurrency and the default bind address. A real server on 127.0.0.1, port 0, in a thread."""

from __future__ import annotations

import http.client
import io
import json
import select
import socket
import sys
import threading
import time
import types
import uuid
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from ganime.cli import build_parser, main
from ganime.web.server import Limits, colorizer_model, make_server, models_from_checkpoints, style_transfer_model
from tests.conftest import one_line_error, synthetic_color, synthetic_sketch, tiny_config, tiny_pairs
from tests.test_colorize import huge_header_png


ROOT = Path(__file__).resolve().parents[1]


# ---- fixtures and helpers -----------------------------------------------------------------------

def make_hint_checkpoint(folder):
    """A tiny hint-aware Pix2Pix (3 + 4 input channels), trained for two steps."""
    from ganime.train import Trainer

    cfg = tiny_config(epochs=1)
    cfg.net.hint_channels = 4
    Trainer(cfg, tiny_pairs(4), folder / "run", device="cpu", progress=False).fit()
    return folder / "run" / "last.pt"


@pytest.fixture(scope="session")
def hint_checkpoint(tmp_path_factory):
    return make_hint_checkpoint(tmp_path_factory.mktemp("hintrun"))


@pytest.fixture(scope="module")
def models(hint_checkpoint, tiny_checkpoint):
    """pix2pix (takes hints, the default) and pix2pix-2 (no hints)."""
    return models_from_checkpoints([hint_checkpoint, tiny_checkpoint], "cpu", style=False)


class Running:
    """A server started in a thread; ``.request(...)`` talks to it with http.client."""

    def __init__(self, models, limits=None, **kw):
        self.log: list[str] = []
        self.server = make_server(models, "127.0.0.1", 0, limits or Limits(), log_line=self.log.append, **kw)
        self.host, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def post(self, fields, path="/api/colorize", **kw):
        body, ctype = multipart(fields)
        return self.request("POST", path, body, {"Content-Type": ctype}, **kw)


@pytest.fixture(scope="module")
def srv(models):
    s = Running(models)
    yield s
    s.close()


def multipart(fields: dict) -> tuple[bytes, str]:
    """fields: name -> bytes (a file part) or str (a plain field)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        if isinstance(value, str):
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n".encode())
            out.write(value + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def png(im: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def sketch(w=64, h=64, mode="RGB") -> Image.Image:
    return synthetic_sketch(synthetic_color(5, 96)).resize((w, h)).convert(mode)


def ico(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="ICO")
    return buf.getvalue()


def hint_strokes(w, h) -> Image.Image:
    im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.line([(w // 4, h // 4), (3 * w // 4, 3 * h // 4)], fill=(230, 40, 40, 255), width=max(3, w // 8))
    d.ellipse([w // 2, 0, w - 1, h // 3], fill=(40, 90, 230, 255))
    return im


def error_of(status, headers, body, expect):
    assert status == expect, (status, body[:300])
    assert headers["Content-Type"] == "application/json"
    msg = json.loads(body)["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg
    return msg


def result_image(status, headers, body, size):
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "image/png"
    im = Image.open(io.BytesIO(body))
    assert im.format == "PNG" and im.mode == "RGB" and im.size == size
    return im


# ---- GET endpoints ------------------------------------------------------------------------------

def test_health(srv):
    status, headers, body = srv.request("GET", "/api/health")
    assert status == 200 and headers["Content-Type"] == "application/json"
    h = json.loads(body)
    from ganime import __version__

    assert h["status"] == "ok" and h["version"] == __version__ and h["device"] == "cpu"
    assert h["models"] == ["pix2pix", "pix2pix-2"] and h["default"] == "pix2pix"
    assert h["limits"]["max_upload_bytes"] == Limits().max_upload_bytes


def test_models_say_which_take_hints(srv):
    status, _, body = srv.request("GET", "/api/models")
    assert status == 200
    m = json.loads(body)
    assert m["default"] == "pix2pix"
    by_name = {x["name"]: x for x in m["models"]}
    assert set(by_name) == {"pix2pix", "pix2pix-2"}
    assert by_name["pix2pix"]["hints"] is True and by_name["pix2pix-2"]["hints"] is False
    assert all(x["kind"] == "colorizer" and not x["needs_style"] for x in m["models"])
    assert by_name["pix2pix"]["source"] == "last.pt"  # a file name, never the server's full paths
    assert "flatten" not in by_name["pix2pix"]  # no colour layer


def test_serve_flatten_sets_the_shipped_models_colour_flattening():
    from ganime.colorize import DEFAULT_WEIGHTS

    listed = lambda ms: {k: m.info.get("flatten") for k, m in ms.items()}  # noqa: E731
    assert listed(models_from_checkpoints([DEFAULT_WEIGHTS], "cpu", style=False)) == {"pix2pix": 5.0}
    assert listed(models_from_checkpoints([DEFAULT_WEIGHTS], "cpu", style=False, flatten=1.5)) == {"pix2pix": 1.5}


def test_style_transfer_listed_only_when_importable(monkeypatch, models):
    import ganime.methods

    # Without the module (or its optional dependencies) there is no entry.
    monkeypatch.setitem(sys.modules, "ganime.methods.style_transfer", None)
    monkeypatch.delattr(ganime.methods, "style_transfer", raising=False)
    assert style_transfer_model("cpu") is None
    fake = types.ModuleType("ganime.methods.style_transfer")
    fake.make_style_transfer = lambda method, **kw: (lambda content, style: style.resize(content.size).convert("RGB"))
    monkeypatch.setitem(sys.modules, "ganime.methods.style_transfer", fake)
    monkeypatch.setattr(ganime.methods, "style_transfer", fake, raising=False)
    st = style_transfer_model("cpu")
    assert st is not None and st.needs_style and not st.hints
    s = Running({**models, st.name: st})
    try:
        names = [m["name"] for m in json.loads(s.request("GET", "/api/models")[2])["models"]]
        assert names == ["pix2pix", "pix2pix-2", "style-fast"]
        im = png(sketch(40, 30))
        assert "needs a 'style'" in error_of(*s.post({"image": im, "method": "style-fast"}), 400)
        red = png(Image.new("RGB", (10, 10), (200, 0, 0)))
        out = result_image(*s.post({"image": im, "method": "style-fast", "style": red}), (40, 30))
        assert out.getpixel((5, 5)) == (200, 0, 0)
        assert "takes no 'style'" in error_of(*s.post({"image": im, "style": red}), 400)
    finally:
        s.close()


def test_page_and_static_files(srv):
    status, headers, body = srv.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    for needle in ('id="file"', 'id="hints"', 'id="colorize"', 'id="method"', "/app.js", "/style.css"):
        assert needle in page
    assert "http://" not in page and "https://" not in page  # works offline: nothing from a CDN
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for path, ctype in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, body = srv.request("GET", path)
        assert status == 200 and headers["Content-Type"].startswith(ctype) and body
    status, headers, body = srv.request("HEAD", "/api/health")
    assert status == 200 and body == b""


# ---- colorize -----------------------------------------------------------------------------------

@pytest.mark.parametrize("w,h,mode,fmt", [
    (64, 64, "RGB", "PNG"),
    (37, 91, "RGB", "PNG"),       # odd, tall
    (300, 120, "L", "PNG"),       # greyscale, wide
    (65, 33, "RGBA", "PNG"),      # alpha is composited on white
    (50, 70, "P", "PNG"),         # palette
    (3, 2, "RGB", "JPEG"),        # tiny JPEG
])
def test_colorize_answers_png_at_input_size(srv, w, h, mode, fmt):
    result_image(*srv.post({"image": png(sketch(w, h, mode), fmt)}), (w, h))


def test_colorize_with_each_model_and_hints(srv):
    im = sketch(80, 60)
    plain = result_image(*srv.post({"image": png(im)}), (80, 60))
    hinted = result_image(*srv.post({"image": png(im), "hints": png(hint_strokes(80, 60))}), (80, 60))
    assert not np.array_equal(np.asarray(plain), np.asarray(hinted))  # the hints reached the model
    # An empty 'hints' part (nothing painted) is the same as none.
    assert png(plain) == png(result_image(*srv.post({"image": png(im), "hints": b""}), (80, 60)))
    other = result_image(*srv.post({"image": png(im), "method": "pix2pix-2"}), (80, 60))
    assert not np.array_equal(np.asarray(plain), np.asarray(other))


def test_orientation_field_turns_or_keeps_a_tagged_image(srv):
    """'orientation' says whether the EXIF tag is applied (default, as the CLI does) or the pixels are
    coloured as stored (what a browser that ignores the tag shows, with hints painted over it)."""
    stored = sketch(80, 60)
    tag = Image.Exif()
    tag[0x0112] = 6  # turn 90 degrees clockwise
    buf = io.BytesIO()
    stored.save(buf, "WEBP", lossless=True, exif=tag.tobytes())
    data = buf.getvalue()
    result_image(*srv.post({"image": data}), (60, 80))
    result_image(*srv.post({"image": data, "orientation": "exif"}), (60, 80))
    kept = result_image(*srv.post({"image": data, "orientation": "stored", "hints": png(hint_strokes(80, 60))}), (80, 60))
    same = result_image(*srv.post({"image": png(stored), "hints": png(hint_strokes(80, 60))}), (80, 60))
    assert np.array_equal(np.asarray(kept), np.asarray(same))
    msg = error_of(*srv.post({"image": data, "orientation": "upright"}), 400)
    assert "choose one of exif, stored" in msg, msg


def test_colour_picture_gets_a_warning_header(srv):
    status, headers, body = srv.post({"image": png(Image.new("RGB", (64, 64), (200, 30, 30)))})
    result_image(status, headers, body, (64, 64))
    assert "not line art" in headers["X-Ganime-Warning"]
    assert "X-Ganime-Warning" not in srv.post({"image": png(sketch(64, 64))})[1]


def test_cyclegan_checkpoint_is_offered(hint_checkpoint, tmp_path):
    from tests.test_cyclegan import random_domains, run_trainer
    from tests.test_cyclegan import tiny_config as cyclegan_config

    run_trainer(cyclegan_config(), tmp_path / "cg", *random_domains(nx=2, ny=2), max_steps=1)
    s = Running(models_from_checkpoints([hint_checkpoint, tmp_path / "cg" / "last.pt"], "cpu", style=False))
    try:
        m = {x["name"]: x for x in json.loads(s.request("GET", "/api/models")[2])["models"]}
        assert m["cyclegan"]["method"] == "cyclegan" and m["cyclegan"]["hints"] is False
        result_image(*s.post({"image": png(sketch(45, 37, "L")), "method": "cyclegan"}), (45, 37))
        msg = error_of(*s.post({"image": png(sketch(45, 37)), "method": "cyclegan",
                                "hints": png(hint_strokes(45, 37))}), 400)
        assert "does not take colour hints" in msg and "choose one of pix2pix" in msg
    finally:
        s.close()


def test_colorize_result_equals_direct_colorizer_call(srv, models):
    im = sketch(45, 77)
    body = srv.post({"image": png(im), "hints": png(hint_strokes(45, 77))})[2]
    direct = models["pix2pix"].run(im, hint_strokes(45, 77))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), np.asarray(direct))


def test_per_request_flatten_and_background_on_the_shipped_model(models):
    """The page's Result options: a model with a colour layer takes 'flatten', every colorizer
    'background'; each request's choice applies to it alone, concurrently too."""
    from concurrent.futures import ThreadPoolExecutor

    from ganime.colorize import DEFAULT_WEIGHTS, Colorizer

    s = Running({**models_from_checkpoints([DEFAULT_WEIGHTS], "cpu", style=False), "tiny": models["pix2pix-2"]})
    try:
        im = Image.open(ROOT / "examples" / "adp-test1.png").convert("RGB").resize((96, 128))
        ref = Colorizer.from_checkpoint(DEFAULT_WEIGHTS, "cpu")
        want = {"": np.asarray(ref(im)), "0": np.asarray(ref(im, flatten=0)),
                "paper": np.asarray(ref(im, flatten=2.5, background="paper"))}
        assert not np.array_equal(want[""], want["0"]) and not np.array_equal(want["0"], want["paper"])
        asks = {"": {}, "0": {"flatten": "0"}, "paper": {"flatten": "2.5", "background": "paper"}}

        def ask(key):
            st, h, body = s.post({"image": png(im), "method": "pix2pix", **asks[key]})
            return key, np.asarray(result_image(st, h, body, im.size))

        with ThreadPoolExecutor(4) as pool:
            for key, got in pool.map(ask, ["", "0", "paper", "", "0", "paper", ""]):
                assert np.array_equal(got, want[key]), key
        # Bad values and fields a model cannot take: 400 with a sentence.
        for fields, expect in (({"flatten": "17"}, "from 0 to 16"), ({"flatten": "nan"}, "from 0 to 16"),
                               ({"flatten": "wide"}, "from 0 to 16"), ({"background": "sky"}, "choose one of model, paper"),
                               ({"flatten": "1", "method": "tiny"}, "has no colour layer")):
            msg = error_of(*s.post({"image": png(im), "method": "pix2pix", **fields}), 400)
            assert expect in msg, msg
        result_image(*s.post({"image": png(im), "method": "tiny", "background": "paper"}), im.size)
    finally:
        s.close()


# ---- bad input: 4xx with a JSON sentence, never 5xx ---------------------------------------------

def truncated_png() -> bytes:
    data = png(sketch(64, 64))
    return data[: len(data) // 2]


def huge_png(tmp_path) -> bytes:
    p = tmp_path / "huge.png"
    huge_header_png(p)
    return p.read_bytes()


@pytest.mark.parametrize("case,status,needle", [
    ("no image field", 400, "missing the 'image' field"),
    ("text file", 400, "not a readable image"),
    ("zero bytes", 400, "empty file"),
    ("truncated png", 400, "corrupt or truncated"),
    ("100000x100000 header", 413, "over this server's limit"),
    ("wrong method", 400, "choose one of pix2pix, pix2pix-2"),
    ("hints to a model without hints", 400, "does not take colour hints"),
    ("hints of another size", 400, "paint hints at the image's size"),
    ("corrupt hints", 400, "hints: not a readable image"),
    ("hints without transparency", 400, "hints: image has no transparency"),
    ("an ICO, a format not read", 400, "image: not a readable image"),
])
def test_bad_colorize_input(srv, tmp_path, case, status, needle):
    good = png(sketch(40, 40))
    fields = {
        "no image field": {"method": "pix2pix", "hints": png(hint_strokes(40, 40))},
        "text file": {"image": b"hello, I am not a PNG"},
        "zero bytes": {"image": b""},
        "truncated png": {"image": truncated_png()},
        "100000x100000 header": {"image": huge_png(tmp_path)},
        "wrong method": {"image": good, "method": "picasso"},
        "hints to a model without hints": {"image": good, "method": "pix2pix-2", "hints": png(hint_strokes(40, 40))},
        "hints of another size": {"image": good, "hints": png(hint_strokes(41, 40))},
        "corrupt hints": {"image": good, "hints": b"GIF89a nonsense"},
        "hints without transparency": {"image": good, "hints": png(hint_strokes(40, 40).convert("RGB"))},
        "an ICO, a format not read": {"image": ico(sketch(32, 32))},
    }[case]
    msg = error_of(*srv.post(fields), status)
    assert needle in msg, msg


def test_a_png_with_megabytes_of_metadata_is_coloured(srv, monkeypatch):
    """Pillow refuses a PNG whose compressed text or ICC chunk decompresses past 1 MB (a workflow or XMP
    record can), and the server answered 400 'corrupt or truncated image' for a fine image. Metadata is read
    up to Pillow's cap on all of an image's text (64 MB); past that, the message says what is wrong."""
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", "x" * 2**21, zip=True)
    for kw in ({"pnginfo": info}, {"icc_profile": b"y" * 2**21}):
        buf = io.BytesIO()
        sketch(40, 40).save(buf, "PNG", **kw)
        assert len(buf.getvalue()) < 2**20
        result_image(*srv.post({"image": buf.getvalue()}), (40, 40))
    monkeypatch.setattr(PngImagePlugin, "MAX_TEXT_MEMORY", 2**20)
    buf = io.BytesIO()
    sketch(40, 40).save(buf, "PNG", pnginfo=info)
    msg = error_of(*srv.post({"image": buf.getvalue()}), 400)
    assert "image: its PNG metadata" in msg and "over 1 MB" in msg, msg


@pytest.mark.parametrize("case,status", [
    ("not multipart", 415),
    ("no closing boundary", 400),
    ("part without a name", 400),
    ("field twice", 400),
    ("chunked body", 411),
    ("bad content-length", 400),
    ("boundary outside latin-1", 400),
])
def test_bad_request_bodies(srv, case, status):
    good = png(sketch(32, 32))
    body, ctype = multipart({"image": good})
    if case == "not multipart":
        r = srv.request("POST", "/api/colorize", good, {"Content-Type": "image/png"})
    elif case == "no closing boundary":
        r = srv.request("POST", "/api/colorize", body[: body.rindex(b"--", 0, len(body) - 4) - 2],
                        {"Content-Type": ctype})
    elif case == "part without a name":
        r = srv.request("POST", "/api/colorize", body.replace(b'name="image"; ', b""), {"Content-Type": ctype})
    elif case == "field twice":
        b = ctype.split("=")[1].encode()
        twice = body.replace(b"--" + b + b"--", body[: body.index(b"--" + b + b"--")] + b"--" + b + b"--", 1)
        r = srv.request("POST", "/api/colorize", twice, {"Content-Type": ctype})
    elif case == "chunked body":
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
        conn.request("POST", "/api/colorize", body=iter([body]), headers={"Content-Type": ctype},
                     encode_chunked=True)
        resp = conn.getresponse()
        r = (resp.status, dict(resp.getheaders()), resp.read())
        conn.close()
    elif case == "boundary outside latin-1":  # RFC 2231 lets a header parameter carry any character
        r = srv.request("POST", "/api/colorize", body, {"Content-Type": "multipart/form-data; boundary*=utf-8''%E2%82%AC"})
    else:
        r = raw_request(srv, b"POST /api/colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: lots\r\n\r\n")
    error_of(*r, status)


@pytest.mark.parametrize("lengths", [["+{n}"], ["{n}_0"], ["0x{n}"], ["{n}", "5"], ["{n}, {n}"]])
def test_content_length_is_digits_and_only_one(srv, lengths):
    """Content-Length is digits (Python's int() also takes '+12' and '1_2'), sent once or always alike:
    a proxy in front could frame the request otherwise than we do (request smuggling)."""
    body, ctype = multipart({"image": png(sketch(32, 32))})
    head = "".join(f"Content-Length: {v.format(n=len(body))}\r\n" for v in lengths)
    r = raw_request(srv, f"POST /api/colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n{head}"
                         f"\r\n".encode() + body)
    assert "Content-Length" in error_of(*r, 400)
    ok = f"Content-Length: {len(body)} \r\nContent-Length:\t{len(body)}\r\n"  # spaces around a value, twice alike
    result_image(*raw_request(srv, f"POST /api/colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                                   f"{ok}Connection: close\r\n\r\n".encode() + body), (32, 32))


def test_a_content_length_of_thousands_of_digits_is_413_not_500(srv):
    """int() refuses a string of over 4300 digits (Python's guard against quadratic conversions), so such a
    Content-Length was answered 500 with a traceback in the log: it is over any limit, and said so."""
    r = raw_request(srv, b"POST /api/colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
    assert "over this server's limit" in error_of(*r, 413)


def raw_request(srv, data: bytes):
    """Send raw bytes; parse the answer with http.client."""
    with socket.create_connection((srv.host, srv.port), timeout=30) as s:
        s.sendall(data)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        return resp.status, dict(resp.getheaders()), resp.read()


@pytest.mark.parametrize("method,path,host,status", [
    ("GET", "/api/health", "127.0.0.1", 200),
    ("HEAD", "/", "127.0.0.1", 200),
    ("GET", "/nope", "127.0.0.1", 404),
    ("GET", "/api/health", "example.com", 403),
])
def test_a_body_sent_with_get_is_not_read_as_the_next_request(srv, method, path, host, status):
    """GET and HEAD bodies are not read: the connection was kept open and the body read as the next
    request, so a body could carry a request of its own past a proxy in front (request smuggling)."""
    inner = b"GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection((srv.host, srv.port), timeout=5) as c:
        c.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(inner)}\r\n\r\n".encode()
                  + inner)
        answer = b""
        try:
            while chunk := c.recv(65536):
                answer += chunk
        except socket.timeout:
            pass
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1 and b"smuggled" not in answer, answer
    assert b"Connection: close" in answer


@pytest.mark.parametrize("method,path,status,allow", [
    ("GET", "/nope", 404, None),
    ("POST", "/nope", 404, None),
    ("GET", "/api/colorize", 405, "POST"),
    ("POST", "/api/health", 405, "GET, HEAD"),
    ("PUT", "/api/colorize", 405, "POST"),
    ("DELETE", "/", 405, "GET, HEAD"),
    ("GET", "/../../etc/passwd", 404, None),
    ("GET", "/server.py", 404, None),
    ("TRACE", "/api/colorize", 405, "POST"),  # verbs http.server has no do_<VERB> for: not its 501
    ("FOO", "/", 405, "GET, HEAD"),
    ("get", "/nope", 404, None),
    ("CONNECT", "localhost:22", 405, "GET, HEAD, POST"),  # was 404 "no such path: 22" (urlsplit's path)
    ("OPTIONS", "*", 405, "GET, HEAD, POST"),
])
def test_unknown_paths_and_verbs(srv, method, path, status, allow):
    body = b"x" * 100 if method in ("POST", "PUT") else None
    status_, headers, resp = srv.request(method, path, body)
    error_of(status_, headers, resp, status)
    if allow:
        assert headers["Allow"] == allow


@pytest.mark.parametrize("request_head", [
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",                 # TLS to a plain-HTTP port
    b"GET / HTTP/2.0\r\nHost: localhost\r\n\r\n",                          # http.server's 505
    b"GET / HTTP/1.1 x\r\nHost: localhost\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",  # header over 64 kB
    b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",         # over 100 headers
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
], ids=["tls", "http/2", "bad version", "long header", "many headers", "long path"])
def test_malformed_requests_get_a_json_4xx(srv, request_head):
    """What http.server refuses itself (before any route) is answered like the rest: 4xx and JSON."""
    status, headers, body = raw_request(srv, request_head)
    assert 400 <= status < 500
    error_of(status, headers, body, status)
    assert headers.get("Connection") == "close"


def test_only_localhost_host_names_on_loopback(srv):
    status, headers, body = srv.request("GET", "/api/health", headers={"Host": "evil.example:8000"})
    assert "only answers to localhost" in error_of(status, headers, body, 403)
    assert srv.request("GET", "/api/health", headers={"Host": f"localhost:{srv.port}"})[0] == 200
    # A name that merely starts like a loopback address is someone's domain (DNS rebinding).
    for host in ("127.0.0.1.evil.example", f"127.0.0.1.nip.io:{srv.port}", "127.evil.example"):
        error_of(*srv.request("GET", "/api/health", headers={"Host": host}), 403)
    for host in (f"127.0.0.1:{srv.port}", "127.3.2.1", f"[::1]:{srv.port}", "LOCALHOST"):
        assert srv.request("GET", "/api/health", headers={"Host": host})[0] == 200, host


@pytest.mark.parametrize("hosts", [("127.0.0.1", "evil.example"), ("localhost", "localhost")])
def test_two_host_headers_are_a_400(srv, hosts):
    """Only the first Host was checked, so a second one (which a proxy in front may read) passed; RFC 7230
    (section 5.4) says a request with more than one is a 400."""
    head = "".join(f"Host: {h}\r\n" for h in hosts)
    status, headers, body = raw_request(srv, f"GET /api/health HTTP/1.1\r\n{head}\r\n".encode())
    assert "2 Host headers" in error_of(status, headers, body, 400)


def test_an_http_1_1_request_without_host_is_a_400(srv):
    """RFC 7230 section 5.4: a 400 (on loopback it was a 403 naming Host '', elsewhere it was served); an
    HTTP/1.0 request may leave it out."""
    status, headers, body = raw_request(srv, b"GET /api/health HTTP/1.1\r\n\r\n")
    assert "needs a Host header" in error_of(status, headers, body, 400)


# ---- limits -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(models):
    """A server with a 20 kB upload limit and a 100x100 pixel limit."""
    s = Running(models, Limits(max_upload_bytes=20_000, max_pixels=10_000))
    yield s
    s.close()


def test_upload_over_byte_limit_is_413_from_content_length(small):
    big = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8)))
    assert len(big) > 20_000
    msg = error_of(*small.post({"image": big}), 413)
    assert "over this server's limit of 20,000 bytes" in msg
    # A much larger upload still gets its answer (not a connection reset) ...
    huge = b"\0" * 3_000_000
    assert error_of(*small.post({"image": huge}), 413)
    # ... also when it announces itself with Expect: 100-continue (curl does), and sends nothing.
    body, ctype = multipart({"image": huge})
    head = (f"POST /api/colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    status, headers, resp = raw_request(small, head)
    assert error_of(status, headers, resp, 413) and headers.get("Connection") == "close"
    # The server is fine afterwards.
    result_image(*small.post({"image": png(sketch(50, 50))}), (50, 50))


def test_pixel_limit(small):
    assert "101x100 pixels, over this server's limit of 10,000" in error_of(
        *small.post({"image": png(sketch(101, 100))}), 413)
    result_image(*small.post({"image": png(sketch(100, 100))}), (100, 100))


def test_long_field_values_are_not_echoed_whole(models):
    s = Running(models)
    try:
        for field in ("method", "background"):
            msg = error_of(*s.post({"image": png(sketch(32, 32)), field: "m" * 100_000}), 400)
            assert len(msg) < 200, (field, len(msg))
        deadline = time.time() + 5
        while len(s.log) < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert len(s.log) == 2 and all(len(line) < 300 for line in s.log)
    finally:
        s.close()


def test_busy_server_answers_503_with_retry_after(models):
    s = Running(models, Limits(max_active=1, max_queue=0))
    try:
        assert s.server.gate.enter()  # someone else is colouring
        status, headers, body = s.post({"image": png(sketch(32, 32))})
        error_of(status, headers, body, 503)
        assert int(headers["Retry-After"]) > 0
        s.server.gate.leave()
        result_image(*s.post({"image": png(sketch(32, 32))}), (32, 32))
    finally:
        s.close()


# ---- concurrency --------------------------------------------------------------------------------

def test_concurrent_requests_match_sequential(srv):
    inputs = [(png(sketch(48, 40)), png(hint_strokes(48, 40))), (png(sketch(33, 57)), None)]
    expected = [srv.post({"image": im, **({"hints": h} if h else {})})[2] for im, h in inputs]

    def one(i):
        im, h = inputs[i % 2]
        status, headers, body = srv.post({"image": im, **({"hints": h} if h else {})})
        return i, status, body

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(16)))
    for i, status, body in results:
        assert status == 200
        assert body == expected[i % 2], f"request {i} differs from the sequential result"


def send_slowly(s, body: bytes, ctype: str, chunk: int, every: float, for_at_most: float) -> tuple[bytes, float]:
    """POST ``body`` ``chunk`` bytes at a time, one chunk each ``every`` s: the answer once there is one (or
    b"" after ``for_at_most`` s), and the seconds it took."""
    t0 = time.monotonic()
    with socket.create_connection((s.host, s.port), timeout=30) as c:
        c.sendall(f"POST /api/colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        answer, sent = b"", 0
        while time.monotonic() - t0 < for_at_most:
            if sent < len(body):
                try:
                    c.sendall(body[sent : sent + chunk])
                except OSError:
                    pass
                sent += chunk
            if select.select([c], [], [], every)[0]:  # the answer, then the server closes
                while part := c.recv(65536):
                    answer += part
                break
        return answer, time.monotonic() - t0


def test_a_trickling_upload_gets_408_and_frees_its_slot(models):
    """A client sending a byte now and then (never silent for socket_timeout) held an active slot for as
    long as it liked, and then, announcing a large body, for socket_timeout plus the body's length at
    min_upload_rate (20 MB: 11 minutes; two such clients stopped all colouring). The body must keep up with
    min_upload_rate once socket_timeout has passed, so it is cut off then; an upload at that rate is not."""
    s = Running(models, Limits(max_active=1, max_queue=1, socket_timeout=1.0, min_upload_rate=1000.0))
    try:
        body, ctype = multipart({"image": png(sketch(32, 32))})
        body += b"\0" * 100_000  # (an epilogue, after the closing boundary): 101 s at 1000 B/s
        answer, elapsed = send_slowly(s, body, ctype, chunk=1, every=0.5, for_at_most=10)  # 2 B/s
        assert answer.startswith(b"HTTP/1.1 408") and b"upload too slow" in answer, answer[:200]
        assert elapsed < 1.0 + 1.0, elapsed
        result_image(*s.post({"image": png(sketch(32, 32))}), (32, 32))  # the slot is free again
        # An upload at twice the rate, longer than socket_timeout, is coloured.
        body, ctype = multipart({"image": png(sketch(32, 32))})
        answer, elapsed = send_slowly(s, body + b"\0" * (4000 - len(body)), ctype, chunk=200, every=0.1,
                                      for_at_most=30)
        assert answer.startswith(b"HTTP/1.1 200") and elapsed > 1.5, (answer[:200], elapsed)
    finally:
        s.close()


def read_slowly(s, body: bytes, ctype: str, rate: float, stop=lambda: False) -> tuple[bytes, float]:
    """POST ``body`` and read the answer at about ``rate`` bytes/s through a small receive buffer, until it is
    whole or the server closes (or, once ``stop()`` is true, at full speed): the bytes read and the seconds."""
    t0 = time.monotonic()
    with socket.socket() as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # (before connecting: the window follows it)
        c.settimeout(30)
        c.connect((s.host, s.port))
        c.sendall(f"POST /api/colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        answer = b""
        while part := c.recv(4096):
            answer += part
            if not stop():
                time.sleep(len(part) / rate)
        return answer, time.monotonic() - t0


def test_a_large_answer_goes_out_at_the_clients_pace_and_a_trickle_is_dropped(models):
    """One sendall sent each answer, and its timeout (socket_timeout) covers the whole call, not each write: a
    client reading slower than the answer's size / socket_timeout (350 KB/s for 10 MB) lost its end, with
    nothing in the log to say why. After socket_timeout's grace an answer must keep up with min_download_rate
    instead, as an upload must with min_upload_rate; a client below it is dropped and its slot freed."""
    def noise(sketch_im, hints_im=None, style=None):  # an answer that does not compress: about 1 MB
        rng = np.random.default_rng(0)
        return Image.fromarray(rng.integers(0, 256, (sketch_im.height, sketch_im.width, 3), dtype=np.uint8))

    from ganime.web.server import WebModel

    s = Running({"noise": WebModel("noise", "colorizer", noise)},
                Limits(socket_timeout=1.0, min_download_rate=100_000, max_active=1, max_queue=0))
    # Accepted sockets inherit the listener's send buffer: a little kernel buffering, not megabytes on loopback.
    s.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    try:
        body, ctype = multipart({"image": png(sketch(600, 600))})
        answer, elapsed = read_slowly(s, body, ctype, rate=400_000)  # about 2.7 s, well past socket_timeout
        head, png_bytes = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200") and elapsed > 1.5, (head, elapsed)
        size = int(http.client.parse_headers(io.BytesIO(head.split(b"\r\n", 1)[1] + b"\r\n\r\n"))["Content-Length"])
        assert len(png_bytes) == size > 1_000_000, (len(png_bytes), size)
        assert Image.open(io.BytesIO(png_bytes)).size == (600, 600)

        dropped = lambda: any("answer too slow" in line for line in s.log)  # noqa: E731
        answer, elapsed = read_slowly(s, body, ctype, rate=25_000, stop=dropped)  # a quarter of the rate
        assert dropped() and answer.startswith(b"HTTP/1.1 200") and len(answer) < size, (s.log, len(answer))
        assert elapsed < 6, elapsed
        result_image(*s.post({"image": png(sketch(32, 32))}), (32, 32))  # its slot is free again
    finally:
        s.close()


def test_open_connections_are_capped_and_the_cap_frees_up(models):
    """Idle connections each hold a thread (up to socket_timeout): past max_connections a 503 at once."""
    s = Running(models, Limits(max_connections=2))
    idle = [socket.create_connection((s.host, s.port), timeout=10) for _ in range(2)]
    try:
        deadline = time.time() + 5
        while s.server._connections < 2 and time.time() < deadline:
            time.sleep(0.01)
        status, headers, body = s.request("GET", "/api/health")
        assert "too many open connections" in error_of(status, headers, body, 503)
        from ganime.web.server import SECURITY_HEADERS  # promised on every answer, this one too

        assert headers["Cache-Control"] == "no-store" and all(headers[k] == v for k, v in SECURITY_HEADERS.items())
        for c in idle:
            c.close()
        deadline = time.time() + 5
        while s.server._connections and time.time() < deadline:
            time.sleep(0.01)
        assert s.request("GET", "/api/health")[0] == 200
    finally:
        for c in idle:
            c.close()
        s.close()


def test_a_request_head_trickled_byte_by_byte_is_dropped(models):
    """Headers sent a byte now and then (never silent for socket_timeout) held their connection and thread
    for ever, so max_connections such clients (64 sockets, no bandwidth) shut everyone else out with 503
    (slowloris). A request's head must arrive whole within socket_timeout."""
    timeout = 2.0  # the trickle (a byte every 0.25 s) is never silent for it; its heads are due after it
    s = Running(models, Limits(socket_timeout=timeout, max_connections=2))
    slow = [socket.create_connection((s.host, s.port), timeout=10) for _ in range(2)]
    stop = threading.Event()

    def trickle():
        for c in slow:
            c.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        while not stop.wait(0.25):
            for c in slow:
                try:
                    c.sendall(b"a")
                except OSError:
                    pass

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        wait_until = time.monotonic() + timeout / 2  # both connections taken: waited for, not slept on (CI load)
        while s.server._connections < 2 and time.monotonic() < wait_until:
            time.sleep(0.01)
        assert s.request("GET", "/api/health")[0] == 503
        deadline, status = time.monotonic() + 2 * timeout + 2, None
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.25)
            status = s.request("GET", "/api/health")[0]
        assert status == 200, "trickled request heads still hold every connection"
    finally:
        stop.set()
        t.join()
        for c in slow:
            c.close()
        s.close()


def test_client_leaving_mid_upload_is_one_log_line_not_a_traceback(models, capsys):
    s = Running(models)
    try:
        body, ctype = multipart({"image": png(sketch(300, 300)) + bytes(200_000)})
        for _ in range(3):
            with socket.create_connection((s.host, s.port), timeout=30) as c:
                c.sendall(f"POST /api/colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 3])
        deadline = time.time() + 10
        while len(s.log) < 3 and time.time() < deadline:
            time.sleep(0.01)
        assert len(s.log) == 3 and all('"POST /api/colorize"' in line for line in s.log), s.log
        result_image(*s.post({"image": png(sketch(32, 32))}), (32, 32))  # still serving
    finally:
        s.close()
    assert "Traceback" not in capsys.readouterr().err


# ---- logging, CLI, bind address -----------------------------------------------------------------

def test_one_log_line_per_request(models):
    s = Running(models)
    try:
        s.request("GET", "/api/health")
        s.post({"image": b"nope"})
        s.request("GET", "/missing")
        deadline = time.time() + 5  # a handler thread logs just after its response is sent
        while len(s.log) < 3 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        s.close()
    assert len(s.log) == 3, s.log
    log = sorted(s.log, key=lambda line: line.split('"')[1])  # handler threads may finish in any order
    assert '"GET /api/health" 200' in log[0]
    assert '"GET /missing" 404' in log[1]
    assert '"POST /api/colorize" 400' in log[2] and "not a readable image" in log[2]


def test_log_lines_escape_control_characters(models):
    """A request line is the client's text: an escape sequence in it must not reach the server's terminal
    (it could retitle it, rewrite earlier lines or hide this one), as http.server's own logging ensures."""
    s = Running(models)
    try:
        raw_request(s, b"GET /\x1b]0;pwned\x07\x1b[2K HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        raw_request(s, b"GET / HTTP/1.1\x1b[2J\r\nHost: localhost\r\n\r\n")  # logged by http.server's send_error
        deadline = time.time() + 5
        while len(s.log) < 2 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        s.close()
    assert len(s.log) == 2, s.log
    assert not any(c in line for line in s.log for c in "\x1b\x07"), s.log
    assert any('"GET /\\x1b]0;pwned\\x07\\x1b[2K" 404' in line for line in s.log), s.log


def test_binds_localhost_by_default(models):
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.max_upload_mb == 20
    server = make_server(models, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1" and server.loopback_only()
    finally:
        server.server_close()


def test_serve_command_prints_url_and_stops_on_ctrl_c(monkeypatch, capsys, tiny_checkpoint):
    from ganime.web.server import GanimeServer

    seen = {}

    def fake_forever(self, poll_interval=0.5):
        seen["address"] = self.server_address
        raise KeyboardInterrupt

    monkeypatch.setattr(GanimeServer, "serve_forever", fake_forever)
    assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert seen["address"][0] == "127.0.0.1"
    assert f"http://127.0.0.1:{seen['address'][1]}/" in out and "pix2pix" in out


def test_serve_without_a_model_is_one_line(monkeypatch, capsys, tmp_path):
    import ganime.colorize

    monkeypatch.setattr(ganime.colorize, "DEFAULT_WEIGHTS", tmp_path / "none.safetensors")
    assert main(["serve", "--port", "0"]) == 2
    assert "no --checkpoint given" in one_line_error(capsys)


def test_serve_port_in_use_is_one_line(capsys, tiny_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port), "--device", "cpu"]) == 2
    assert "already in use" in one_line_error(capsys)


@pytest.mark.parametrize("flag,value,expect", [
    ("--max-queue", "-1", "expected a number of 0 or more, got '-1'"),  # was taken as 0
    ("--max-active", "0", "expected a positive number, got '0'"),
])
def test_serve_limits_out_of_range_are_usage_errors(capsys, flag, value, expect):
    with pytest.raises(SystemExit) as e:
        main(["serve", flag, value])
    assert e.value.code == 2 and expect in capsys.readouterr().err


def test_colorizer_model_wraps_a_colorizer(tiny_checkpoint):
    from ganime.colorize import Colorizer

    m = colorizer_model("x", Colorizer.from_checkpoint(tiny_checkpoint, "cpu"))
    assert m.public()["hints"] is False and m.public()["method"] == "pix2pix"
    assert m.run(sketch(20, 30)).size == (20, 30)
