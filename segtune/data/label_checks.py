"""Checks of the label space: the mistakes that do not crash but train on wrong labels.

`checks.scan` reads every mask once; while it does, `mask_facts` notes what these checks need
of each mask's stored values (their histogram before the mask rules, and how many boundary
pixels hold an id strictly between their neighbours'). `label_findings` then turns the
totals into findings, one line each naming what was seen and the fix:

- binary_255 (problem): masks hold only 0 and 255 (the ignore index): every foreground pixel
  would be ignored. Fix: `--binary` (or `binary: true`), or `label_map: {255: 1}`.
- unreduced_ade20k (warning with ADE20K's labels, else a hint): labels whose class 0 is a real
  class (ADE20K's wall), on masks where 0 is in nearly every mask and nothing is ignored:
  ADE20K-style masks (0 = "other") read without `--reduce-labels`, every id off by one. Reduced
  ADE20K always ignores some pixels (its "other" is in nearly every image); a small fully
  labelled dataset whose class 0 is everywhere (sky in street scenes) looks the same, so with
  other labels it is only a hint.
- already_reduced (warning): `--reduce-labels` on masks that use 255 widely and never reach
  the top stored id: reduced twice, class 0 ignored and every id shifted.
- class_outside_labels (problem): masks with ids beyond the labels (each is also listed as a
  bad file).
- classes_never_present (hint): classes of the labels that no mask holds.
- interpolated_masks (warning): most masks have in-between ids along their boundaries, as
  masks resized with bilinear interpolation (or saved as JPEG) do.
- binary_not_binary (warning): `--binary` on masks with many values that are neither near 0
  nor near 255 (they would all become background).

A "problem" stops training and evaluation; warnings and hints are shown and recorded.
The thresholds below were measured on clean and spoiled real masks: see docs/data.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .labels import LabelSet, ade20k_labels

PROBLEM, WARNING, HINT = "problem", "warning", "hint"

BINARY_NAMES = ("background", "foreground")
BINARY_THRESHOLD = 128  # --binary: stored values >= this are foreground (0/255 masks, JPEG-noisy or not)

# binary_255: pixels that are neither 0 nor 255 (JPEG noise, resizing) may be this share at most ...
BINARY_OTHER_SHARE = 0.05
# ... and when there are some, at least this share of them must lie in 128..254 (noise around 255,
# or interpolation ramps), where a dataset's own small class ids (1, 2, 3 ...) never are
BINARY_HIGH_SHARE = 0.05

# unreduced_ade20k: class 0 in at least this share of the masks, covering at least this share of
# the labelled pixels, while at most IGNORED_AT_MOST of the pixels are ignored (0 plays "unlabelled")
ZERO_IMAGE_SHARE = 0.8
ZERO_PIXEL_SHARE = 0.005
IGNORED_AT_MOST = 0.001
# names that mean "not a class": with one of them as class 0, 0 everywhere is expected
NOT_A_CLASS = re.compile(r"^_*(background|bg|back_?ground|other|others|unlabel+ed|unlabel|void|none|null|nothing|"
                         r"ignored?|clutter|unknown|empty|misc)_*$", re.IGNORECASE)
ADE20K_COMMONEST = 10  # ADE20K's classes are ordered by pixel frequency: ids 0..9 are its commonest

# already_reduced: 255 stored in at least this share of the masks
REDUCED_255_IMAGE_SHARE = 0.5

# interpolated_masks: a mask looks interpolated when at least this share of its boundary pixels
# hold an id strictly between their two neighbours' (left/right or up/down) and at least
# INTERP_MIN_PIXELS do; masks with fewer than INTERP_MIN_BOUNDARY boundary pixels are not judged.
# Measured (docs/data.md): clean and nearest-resized masks 0.000-0.033, bilinear- or bicubic-resized 0.16-0.52.
INTERP_SHARE = 0.08
INTERP_MIN_PIXELS = 4
INTERP_MIN_BOUNDARY = 16
INTERP_MASK_SHARE = 0.5  # ... and the dataset when at least half of the judged masks do

# binary_not_binary: with --binary, values in 16..239 (neither near 0 nor near 255) may be this share at most
BINARY_MIDDLE_SHARE = 0.05

MAX_NAMES = 8  # class names listed in one message


@dataclass(frozen=True)
class Finding:
    code: str  # machine-readable, e.g. "binary_255"
    severity: str  # "problem" (stops training), "warning" or "hint"
    message: str  # one line: what was seen, and the fix

    def to_json(self) -> dict:
        return {"code": self.code, "severity": self.severity, "message": self.message}


def binary_labels() -> LabelSet:
    return LabelSet.from_names(BINARY_NAMES)


def read_binary(mask: np.ndarray) -> np.ndarray:
    """--binary: 0 background, 1 foreground (values >= 128; a mask stored as 0/1 keeps its 1s)."""
    if mask.size and mask.max() <= 1:
        return (mask == 1).astype(np.int64)
    return (mask >= BINARY_THRESHOLD).astype(np.int64)


# ---------------------------------------------------------------- per mask, in the scan


@dataclass
class MaskFacts:
    """What the label checks need of one mask's stored values."""

    histogram: np.ndarray | None  # stored values' pixel counts (None: colour-coded or not integer)
    boundary: int = 0  # pixels that differ from a 4-neighbour
    between: int = 0  # of those, pixels strictly between their left/right or up/down neighbours


def stored_values(mask: np.ndarray) -> np.ndarray | None:
    """A mask as stored, as a 2-D integer array: grey RGB masks by their first channel; None for
    colour-coded masks and non-integer values."""
    if mask.ndim == 3:
        rgb = mask[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            return None
        mask = rgb[..., 0]
    if mask.ndim != 2 or mask.dtype.kind not in "biu" or (mask.size and mask.min() < 0):
        return None
    return mask


def mask_facts(stored: np.ndarray | None) -> MaskFacts | None:
    values = stored_values(stored) if stored is not None else None
    if values is None:
        return None
    histogram = np.bincount(values.ravel()) if values.size else np.zeros(1, np.int64)
    boundary = between = 0
    if values.shape[0] >= 3 and values.shape[1] >= 3:
        m = values.astype(np.int32)
        c = m[1:-1, 1:-1]
        left, right, up, down = m[1:-1, :-2], m[1:-1, 2:], m[:-2, 1:-1], m[2:, 1:-1]
        edge = (c != left) | (c != right) | (c != up) | (c != down)
        inside = (((np.minimum(left, right) < c) & (c < np.maximum(left, right)))
                  | ((np.minimum(up, down) < c) & (c < np.maximum(up, down))))
        boundary, between = int(edge.sum()), int(inside.sum())
    return MaskFacts(histogram, boundary, between)


def looks_interpolated(facts: MaskFacts) -> bool | None:
    """None: too few boundary pixels to judge."""
    if facts.boundary < INTERP_MIN_BOUNDARY:
        return None
    return facts.between >= INTERP_MIN_PIXELS and facts.between / facts.boundary >= INTERP_SHARE


# ---------------------------------------------------------------- findings


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    return np.pad(a, (0, n - len(a))) if len(a) < n else a


def _total(arrays) -> np.ndarray:
    arrays = [a for a in arrays if a is not None and len(a)]
    n = max((len(a) for a in arrays), default=0)
    return sum((_grow(a, n) for a in arrays), np.zeros(n, np.int64))


def _names(names: list[str]) -> str:
    more = f" and {len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else ""
    return ", ".join(names[:MAX_NAMES]) + more


def _class0_is_real(labels: LabelSet | None) -> bool:
    return labels is not None and len(labels) > 1 and not NOT_A_CLASS.match(labels.names[0].strip().replace(" ", "_"))


def _is_ade20k(labels: LabelSet | None) -> bool:
    return labels is not None and labels.names == ade20k_labels().names


def label_findings(data, stats: dict, labels: LabelSet | None) -> list[Finding]:
    """The label-space findings of one `checks.scan` (stats per split).

    `labels`: the classes given, or the data's own (id2label.json, data file names); None when the
    classes will be numbered from the masks.
    """
    source = data.source
    raw = _total(getattr(s, "raw_counts", None) for s in stats.values())
    raw_images = _total(getattr(s, "raw_image_counts", None) for s in stats.values())
    raw_masks = sum(getattr(s, "raw_masks", 0) for s in stats.values())
    pixels = _total(s.pixel_counts for s in stats.values())
    images = _total(s.image_counts for s in stats.values())
    pairs = sum(s.pairs for s in stats.values())
    ignored = sum(s.ignored_pixels for s in stats.values())
    binary = getattr(data, "binary", False)
    findings = []

    # binary_255: only 0 and the ignore index 255 stored, and nothing said about 255
    if not binary and not data.label_map and data.ignore_index == 255 and raw_masks and len(raw) > 255:
        total = int(raw.sum())
        zeros, high = int(raw[0]), int(raw[255])
        other = total - zeros - high
        in_high = int(raw[BINARY_THRESHOLD:255].sum())
        noise_like = other == 0 or in_high >= BINARY_HIGH_SHARE * other
        if zeros and high and other <= BINARY_OTHER_SHARE * total and noise_like:
            also = f", and {other / total:.1%} in-between values" if other else ""
            reduce = " (and drop --reduce-labels)" if data.reduce_labels else ""
            findings.append(Finding("binary_255", PROBLEM, (
                f"{source}: masks hold only 0 and 255 ({high / total:.1%} of pixels 255{also}): with ignore index 255 "
                "every foreground pixel would be ignored; pass --binary (0 background, 255 foreground; "
                f"binary: true in a data file) or label_map {{255: 1}}{reduce}")))

    # class_outside_labels: listed per file among the problems; one line here says what to do
    outside = [top for s in stats.values() for top in getattr(s, "outside", [])]
    if outside and labels is not None:
        n, top = len(labels), max(outside)
        fix = ("ADE20K-style masks (0 = other) need --reduce-labels" if top == n and not data.reduce_labels
               else "give labels with every class, or map the extra ids to the ignore index with label_map")
        findings.append(Finding("class_outside_labels", PROBLEM, (
            f"{source}: {len(outside)} mask(s) hold class ids up to {top}, outside the {n} classes of the labels "
            f"(0..{n - 1}, ignore index {data.ignore_index}); {fix}")))

    # unreduced_ade20k: class 0 a real class, yet 0 in nearly every mask and nothing ignored
    if (not data.reduce_labels and not binary and _class0_is_real(labels) and data.ignore_index != 0 and pairs
            and len(images) and images[0] >= ZERO_IMAGE_SHARE * pairs):
        labelled = int(pixels.sum())
        zero_share = int(pixels[0]) / max(1, labelled)
        ignored_share = ignored / max(1, labelled + ignored)
        if zero_share >= ZERO_PIXEL_SHARE and ignored_share <= IGNORED_AT_MOST:
            evidence, severity = "", WARNING if _is_ade20k(labels) else HINT
            if _is_ade20k(labels):
                absent = [labels.names[i] for i in range(ADE20K_COMMONEST) if i >= len(pixels) or not pixels[i]]
                if absent:
                    evidence = f"; {_names(absent)}, among ADE20K's commonest classes, never occur"
            guess = ("ADE20K-style masks, where 0 means 'other', read without reduction, every class id off by one"
                     if severity == WARNING else "if 0 means 'other' or unlabelled here (ADE20K-style masks), every "
                     "class id is off by one")
            findings.append(Finding("unreduced_ade20k", severity, (
                f"{source}: class 0 ('{labels.names[0]}') is in {int(images[0])} of {pairs} masks "
                f"({zero_share:.1%} of pixels) and no pixel is ignored: {guess}{evidence}; pass --reduce-labels "
                "(0 -> ignored, k -> k-1; reduce_labels: true in a data file)")))

    # already_reduced: --reduce-labels on masks that already use 255 widely and never reach the top id
    if (data.reduce_labels and raw_masks and len(raw_images) > 255
            and raw_images[255] >= REDUCED_255_IMAGE_SHARE * raw_masks):
        stored = np.nonzero(raw[:255])[0]
        top = int(stored.max()) if len(stored) else -1
        n = len(labels) if labels is not None else None
        if n is None or top < n:
            reach = f" and the largest other value is {top}, below the top stored id {n}" if n is not None else ""
            class0 = f" ('{labels.names[0]}')" if labels is not None else ""
            findings.append(Finding("already_reduced", WARNING, (
                f"{source}: --reduce-labels on masks that look reduced already: 255 is in {int(raw_images[255])} "
                f"of {raw_masks} masks ({int(raw[255]) / max(1, int(raw.sum())):.1%} of pixels){reach}; reducing "
                f"again ignores class 0{class0} and shifts every id down by one; drop --reduce-labels "
                "(reduce_labels: false in a data file)")))

    # classes_never_present: a hint, not an error (data may hold a subset of the classes)
    if labels is not None and pairs:
        absent = [name for i, name in enumerate(labels.names) if i >= len(pixels) or not pixels[i]]
        if absent:
            present = np.nonzero(pixels[: len(labels)])[0]
            reach = (f"; the masks never reach ids above {int(present.max())}"
                     if len(present) and present.max() < len(labels) - 1 else "")
            findings.append(Finding("classes_never_present", HINT, (
                f"{source}: {len(absent)} of the {len(labels)} classes never occur in the masks: {_names(absent)}"
                f"{reach}; fine when the data holds a subset of the classes, else check --labels and "
                "--reduce-labels")))

    # interpolated_masks: in-between ids along the boundaries of most masks
    judged = sum(getattr(s, "interp_judged", 0) for s in stats.values())
    flagged = [share for s in stats.values() for share in getattr(s, "interp_flagged", [])]
    if not binary and judged and len(flagged) >= INTERP_MASK_SHARE * judged:
        findings.append(Finding("interpolated_masks", WARNING, (
            f"{source}: {len(flagged)} of {judged} masks look interpolated: {float(np.median(flagged)):.0%} of "
            "their boundary pixels (median) hold an id between their neighbours' ids, as masks resized with "
            "bilinear or bicubic interpolation (or saved as JPEG) do; resize masks with nearest-neighbour "
            "(PIL Image.NEAREST, cv2.INTER_NEAREST) and store them as PNG")))

    # binary_not_binary: --binary on masks that are not 0/255 (or 0/1)
    if binary and raw_masks and len(raw):
        total = int(raw.sum())
        middle = int(raw[16:240].sum())
        if middle > BINARY_MIDDLE_SHARE * total:
            findings.append(Finding("binary_not_binary", WARNING, (
                f"{source}: --binary on masks with {middle / total:.1%} of pixels neither near 0 nor 255 "
                f"(values >= {BINARY_THRESHOLD} become foreground, the rest background); for masks of class ids "
                "drop --binary")))
    return findings


def problem_lines(findings: list[Finding]) -> list[str]:
    """The findings that stop training and are not already listed file by file."""
    return [f.message for f in findings if f.severity == PROBLEM and f.code != "class_outside_labels"]


def log_findings(findings: list[Finding], log) -> None:
    """Warnings and hints as log lines (problems are raised by the caller)."""
    for f in findings:
        if f.severity == WARNING:
            log.warning("segtune: warning: %s [%s]", f.message, f.code)
        elif f.severity == HINT:
            log.info("segtune: hint: %s [%s]", f.message, f.code)
