"""Reading an upload safely: the body under a size limit, a multipart field in memory, the image checked.

Everything stays in memory: a multipart upload is parsed here (python-multipart's push parser)
rather than by Starlette's form parser, which spools large files to a temporary file; the part's
file name is never read, so no path a request names ever reaches the disk. Images are decoded by
Pillow from a fixed list of raster formats only (no EPS, which would run Ghostscript), with the
pixel count checked from the header before any pixel is decoded (decompression bombs), then fully
decoded, so a truncated file fails here. Every refusal is an `UploadError` with its HTTP status.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from ..data.reading import BOMB_ERRORS, bombs_refused, to_rgb

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")  # raster formats Pillow reads itself
NOT_IMAGES = {  # first bytes (lower-cased, after white space) -> what was sent instead
    b"<svg": "an SVG drawing", b"<?xml": "an XML document (SVG?)", b"%pdf": "a PDF document",
    b"<!doctype": "an HTML page", b"<html": "an HTML page", b"{": "JSON", b"[": "JSON", b"pk\x03\x04": "a ZIP archive",
    b"%!ps": "a PostScript file",
}
REFUSED_TYPES = ("image/svg+xml", "application/pdf", "text/", "application/xml", "application/xhtml",
                 "application/postscript", "application/zip")


class UploadError(Exception):
    """A refused upload: `status` (400, 401, 413, 415, 422) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def refused_type(content_type: str | None) -> str | None:
    """The media type when it is plainly not a raster image (SVG, PDF, HTML, text), else None."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media if media and media.startswith(REFUSED_TYPES) else None


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (Content-Length first)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise UploadError(400, f"Content-Length {declared[:40]!r} is not a number") from None
        if too_big:
            raise UploadError(413, f"the upload is {int(declared) / 2**20:.1f} MiB; the limit is {limit / 2**20:g} MiB")
    from starlette.requests import ClientDisconnect

    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise UploadError(413, f"the upload is over the {limit / 2**20:g} MiB limit")
            chunks.append(chunk)
    except ClientDisconnect:  # a Content-Length larger than what was sent, then the connection closed
        raise UploadError(400, "the client closed the connection before the body ended") from None
    return b"".join(chunks)


def multipart_field(body: bytes, content_type: str, name: str = "file") -> tuple[bytes, str | None]:
    """(content, content type) of the form field `name` of a multipart/form-data body, parsed in memory."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary")
    parts: list[dict] = []
    state = {"field": b"", "value": b""}

    def on_part_begin():
        parts.append({"headers": {}, "data": []})

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        parts[-1]["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data, start, end):
        parts[-1]["data"].append(data[start:end])

    callbacks = dict(on_part_begin=on_part_begin, on_header_field=on_header_field, on_header_value=on_header_value,
                     on_header_end=on_header_end, on_part_data=on_part_data)
    try:
        parser = MultipartParser(boundary, callbacks, max_size=len(body))
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as e:
        raise UploadError(400, f"malformed multipart body ({str(e).splitlines()[0][:120]})") from None
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if disposition.get(b"name", b"").decode("latin-1") == name:  # the part's filename is never used
            content_type = part["headers"].get(b"content-type")
            return b"".join(part["data"]), content_type.decode("latin-1") if content_type else None
    raise UploadError(422, f"multipart upload without a '{name}' field (send the image as the field '{name}')")


def _sniff(data: bytes) -> str | None:
    head = data[:64].lstrip().lower()
    return next((what for start, what in NOT_IMAGES.items() if head.startswith(start)), None)


def decode_image(data: bytes, max_pixels: int, scale: int | None = None) -> Image.Image:
    """The upload as a PIL RGB image (EXIF orientation applied, as `segtune predict` reads files).

    Refuses: no bytes (400); SVG, PDF, HTML, JSON ... sent as an image (415); bytes that are no
    image of FORMATS (400); over `max_pixels` pixels, or, with the model's training `scale` (its
    short side), over `max_pixels` once resized to it: a 1 x 20000 strip (413); truncated (400)."""
    if not data:
        raise UploadError(400, "empty upload: send the image bytes")
    if (what := _sniff(data)) is not None:
        raise UploadError(415, f"this is {what}, not an image; send a PNG, JPEG, WebP, BMP, TIFF or GIF")
    try:
        with bombs_refused():
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width < 1 or height < 1:
                raise UploadError(400, f"the image is {width} x {height} pixels")
            if width * height > max_pixels:
                raise UploadError(413, f"the image is {width} x {height} = {width * height / 1e6:.1f} megapixels; "
                                  f"the limit is {max_pixels / 1e6:g}")
            if scale and width * height * (scale / min(width, height)) ** 2 > max_pixels:
                raise UploadError(413, f"the image is {width} x {height}: resized to the model's scale ({scale} "
                                  f"pixels on the short side) it would be over {max_pixels / 1e6:g} megapixels")
            image.load()
            return to_rgb(image)
    except UploadError:
        raise
    except BOMB_ERRORS:
        raise UploadError(413, "the image is too large to decode safely (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise UploadError(400, "not an image, or a format this server does not read (PNG, JPEG, WebP, BMP, TIFF, "
                          "GIF)") from None
    except Exception as e:  # truncated (OSError), corrupt headers (SyntaxError, ValueError), anything else
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UploadError(400, f"cannot decode the image ({first})") from None
