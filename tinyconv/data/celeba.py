"""CelebA on disk: detect the layout, parse the annotation files, list and open the images.

Three layouts are accepted (see ``../shared`` facts, summarised here):

* ``official``    ``ROOT/img_align_celeba/*.jpg`` or ``ROOT/img_align_celeba.zip``,
                  ``ROOT/list_attr_celeba.txt``, ``ROOT/list_eval_partition.txt``
* ``torchvision`` the same files under ``ROOT/celeba/``
* ``kaggle``      ``ROOT/list_attr_celeba.csv`` (header ``image_id,5_o_Clock_Shadow,...``),
                  ``ROOT/list_eval_partition.csv`` (header ``image_id,partition``), images
                  double-nested at ``ROOT/img_align_celeba/img_align_celeba/*.jpg``

``source_layout`` is one of ``official-folder``, ``official-zip``, ``torchvision-folder``,
``torchvision-zip``, ``kaggle``. Attributes are always resolved by header name, never by index.

Everything read here is untrusted. Annotation files are regular UTF-8 files with one line per
image: a byte that is not UTF-8, or a file name listed twice (even with the same values), is an
error naming the file and the line. A zip counts only its members ``img_align_celeba/NAME``; an
unsafe member name or a repeated NAME is an error. Image files are size-capped before they are read
(:data:`MAX_IMAGE_BYTES`; zip members also by compression ratio).
"""
import csv
import hashlib
import io
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, UsageError
from .resize import MAX_PIXELS

# The 40 attribute names in the official order (index 10 Blurry, 15 Eyeglasses, 20 Male, 31 Smiling).
ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
DEFAULT_ATTRIBUTES = ("Eyeglasses", "Male", "Smiling")
PARTITIONS = {"train": 0, "validation": 1, "test": 2}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_FOLDER = "img_align_celeba"  # inside a zip, images count only as IMAGE_FOLDER/NAME
SYNTHETIC_MARKER = "SYNTHETIC_NOT_CELEBA.txt"  # written by synthesize(); makes prepare() flag the file

# Guards against hostile or broken input. CelebA's attribute file is 26 MB and its images about 10 kB.
MAX_ANNOTATION_BYTES = 1 << 30
MAX_IMAGE_BYTES = 4 * MAX_PIXELS  # an image within the pixel cap needs no more (8-bit RGBA, raw)
MAX_ZIP_RATIO = 100               # JPEG and PNG barely deflate (about 1:1); a bomb reaches 1000:1
_UNSAFE_MEMBER = re.compile(r"(^/|^[A-Za-z]:|\\|\x00|(^|/)\.\.(/|$))")


class ImageTooLarge(OSError):
    """An image file refused before it is read: over MAX_IMAGE_BYTES, or a zip member whose declared
    size or compression ratio says zip bomb. ``prepare`` skips and lists it like a corrupt image."""


@dataclass
class Annotations:
    """Parsed annotation files. ``values`` is int8 (N, 40) in {-1, 1}; ``partition`` uint8 (N,)."""
    filenames: list
    names: list
    values: np.ndarray
    partition: np.ndarray


@dataclass
class CelebASource:
    """One CelebA root on disk, its layout detected. Open images with :func:`open_reader`."""
    root: Path
    layout: str
    attr_file: Path
    partition_file: Path
    images: Path  # a folder or a zip file
    synthetic: bool = False
    _zip_members: dict = field(default=None, repr=False)

    @property
    def is_zip(self):
        return self.images.suffix.lower() == ".zip"

    def image_names(self):
        """{file name: folder path or ZipInfo} of every image found.

        In a folder, a name that is not valid UTF-8 is left out: no annotation line can name it.
        In a zip, see :func:`zip_images`.
        """
        if self.is_zip:
            if self._zip_members is None:
                self._zip_members = zip_images(self.images)
            return self._zip_members
        try:
            with os.scandir(self.images) as it:
                return {e.name: e.path for e in it
                        if e.name.lower().endswith(IMAGE_SUFFIXES) and _is_utf8(e.name) and e.is_file()}
        except OSError as exc:
            raise DataError(f"{self.images}: cannot list the image folder ({exc.strerror or exc})") from None

    def describe_image(self, name):
        """A path a user can find, for messages: ``folder/000001.jpg`` or ``file.zip:member``."""
        if self.is_zip:
            info = self.image_names().get(name)
            return f"{self.images}:{info.filename if info else name}"
        return str(self.images / name)

    def fingerprint(self, extra=""):
        """SHA-256 over the annotation files' bytes and the image listing (name, size, mtime or CRC).

        Any added, removed, resized or touched image, or any edit to the text files, changes it.
        ``extra`` folds in the preparation settings (size, attributes, policy).
        """
        h = hashlib.sha256()
        h.update(f"layout={self.layout}\n{extra}\n".encode())
        for f in (self.attr_file, self.partition_file):
            h.update(_sha256_file(f).encode())
        if self.is_zip:
            for info in sorted(_zip_infolist(self.images), key=lambda i: i.filename):
                h.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
        else:
            with os.scandir(self.images) as it:
                entries = sorted((os.fsencode(e.name), e.stat()) for e in it if e.is_file())
            for name, st in entries:  # bytes: a stray file with a non-UTF-8 name counts too
                h.update(name + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def _is_utf8(name):
    try:
        name.encode("utf-8")  # os.scandir decodes undecodable bytes to lone surrogates
    except UnicodeEncodeError:
        return False
    return True


def _zip_infolist(path):
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the zip file ({exc})") from None


def zip_images(path):
    """{file name: ZipInfo} of the images in the zip ``path``: members ``img_align_celeba/NAME``.

    Other members (``__MACOSX/...``, a README) are ignored. A member whose name could point outside
    a folder (absolute, ``..``, a backslash, a drive letter) makes the whole zip an error, and so
    does a second image with the same NAME: either would otherwise swap an image silently.
    """
    prefix = IMAGE_FOLDER + "/"
    found, elsewhere = {}, []
    for info in _zip_infolist(path):
        member = info.filename
        if _UNSAFE_MEMBER.search(member):
            raise DataError(f"{path}: member {member!r} has an unsafe name (absolute, '..', a backslash "
                            "or a drive letter); refusing the zip")
        if info.is_dir() or not member.lower().endswith(IMAGE_SUFFIXES):
            continue
        name = member[len(prefix):] if member.startswith(prefix) else ""
        if not name or "/" in name:
            elsewhere.append(member)
            continue
        if name in found:  # a zip may hold the same member name twice; the later one would win
            raise DataError(f"{path}: member {member!r} is in the zip twice; refusing the zip")
        found[name] = info
    if not found and elsewhere:
        raise DataError(f"{path}: no image under {prefix} (found e.g. {elsewhere[0]!r}); the images must "
                        f"be the members {prefix}NAME.jpg")
    return found


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_existing(*paths):
    return next((p for p in paths if p.exists()), None)


def detect_layout(root):
    """Find which of the three layouts ``root`` holds. Raises DataError naming what is missing."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if not root.is_dir():
        raise DataError(f"{root}: expected a CelebA folder (or a prepared .h5 file)")
    for base, kind in ((root, "official"), (root / "celeba", "torchvision")):
        attr = base / "list_attr_celeba.txt"
        if attr.exists():
            part = base / "list_eval_partition.txt"
            images = _first_existing(base / "img_align_celeba", base / "img_align_celeba.zip")
            if not part.exists():
                raise DataError(f"{part}: missing partition file (found {attr})")
            if images is None:
                raise DataError(f"{base / 'img_align_celeba'}: missing image folder "
                                f"(nor {base / 'img_align_celeba.zip'}) next to {attr}")
            if images.is_dir() and (images / "img_align_celeba").is_dir():
                images = images / "img_align_celeba"  # an extra level of nesting from unzipping
            layout = f"{kind}-{'zip' if images.suffix.lower() == '.zip' else 'folder'}"
            return _source(root, layout, attr, part, images)
    attr = root / "list_attr_celeba.csv"
    if attr.exists():
        part = root / "list_eval_partition.csv"
        if not part.exists():
            raise DataError(f"{part}: missing partition file (found {attr})")
        images = _first_existing(root / "img_align_celeba" / "img_align_celeba",
                                 root / "img_align_celeba")
        if images is None or not images.is_dir():
            raise DataError(f"{root / 'img_align_celeba' / 'img_align_celeba'}: missing image folder "
                            f"next to {attr}")
        return _source(root, "kaggle", attr, part, images)
    raise DataError(
        f"{root}: not a CelebA folder: looked for list_attr_celeba.txt (official layout), "
        "celeba/list_attr_celeba.txt (torchvision layout) and list_attr_celeba.csv (Kaggle layout)")


def _source(root, layout, attr, part, images):
    for f in (attr, part):
        if not f.is_file():  # a folder, a FIFO or a device would fail (or block) when read
            raise DataError(f"{f}: not a regular file")
    synthetic = any((p / SYNTHETIC_MARKER).exists() for p in {attr.parent, root})
    return CelebASource(Path(root), layout, attr, part, images, synthetic)


def parse_attr_txt(path):
    """Official ``list_attr_celeba.txt`` -> (filenames, names, int8 values (N, K)). Strict."""
    path = Path(path)
    lines = read_text(path).splitlines()
    if len(lines) < 2:
        raise DataError(f"{path}: truncated attribute file: needs a count line and a header line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DataError(f"{path}: line 1 should be the number of images, got {lines[0].strip()[:40]!r}") from None
    names = lines[1].split()
    _check_names(path, names)
    rows = [(i + 3, ln.split()) for i, ln in enumerate(lines[2:]) if ln.strip()]
    if len(rows) != count:
        raise DataError(f"{path}: header says {count} images but the file has {len(rows)} rows"
                        + (" (truncated file?)" if len(rows) < count else ""))
    return _rows_to_arrays(path, names, rows)


def parse_attr_csv(path):
    """Kaggle ``list_attr_celeba.csv`` -> (filenames, names, int8 values (N, K))."""
    path = Path(path)
    numbered = _csv_rows(path)
    if not numbered:
        raise DataError(f"{path}: empty attribute file")
    _, header = numbered[0]
    if not header or header[0].strip() != "image_id":
        raise DataError(f"{path}: first column should be 'image_id', got {header[:1]}")
    names = [h.strip() for h in header[1:]]
    _check_names(path, names)
    rows = [(lineno, [c.strip() for c in r]) for lineno, r in numbered[1:]]
    return _rows_to_arrays(path, names, rows)


def _csv_rows(path):
    """[(line number, cells)] of the non-empty rows of a CSV annotation file."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        return [(reader.line_num, r) for r in reader if r]
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None


def _rows_to_arrays(path, names, rows):
    k = len(names)
    filenames, values = [], np.empty((len(rows), k), dtype=np.int8)
    first = {}  # file name -> (line number, its values): a name listed twice is an error
    for j, (lineno, tok) in enumerate(rows):
        if len(tok) != k + 1:
            raise DataError(f"{path}: line {lineno} has {len(tok) - 1} values, expected {k} "
                            "(truncated or malformed file?)")
        try:
            v = [int(t) for t in tok[1:]]
        except ValueError:
            raise DataError(f"{path}: line {lineno}: values must be -1 or 1, got {tok[1:6]}...") from None
        if any(x not in (-1, 1) for x in v):
            raise DataError(f"{path}: line {lineno}: values must be -1 or 1, got {sorted(set(v))}")
        _check_repeat(path, first, tok[0], lineno, v)
        filenames.append(tok[0])
        values[j] = v
    return filenames, names, values


def _check_repeat(path, first, name, lineno, value):
    """A file name listed a second time is an error naming both lines, whether or not the values agree:
    "last line wins" would silently change a label or move an image to another split."""
    if name in first:
        line0, value0 = first[name]
        how = "repeats" if value == value0 else "contradicts"
        raise DataError(f"{path}: line {lineno}: {name} is listed twice: this line {how} line {line0}; "
                        "keep one line per image")
    first[name] = (lineno, value)


def _check_names(path, names):
    if not names:
        raise DataError(f"{path}: missing attribute header")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate attribute names in the header")


def parse_partition(path):
    """``list_eval_partition.txt`` (``name p``, no header) or ``.csv`` (``image_id,partition``)
    -> {file name: 0|1|2}. A file name listed twice is an error naming both lines."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
        if not rows or [c.strip() for c in rows[0][1]] != ["image_id", "partition"]:
            raise DataError(f"{path}: header should be 'image_id,partition'")
        numbered = rows[1:]
    else:
        numbered = [(i + 1, ln.split()) for i, ln in enumerate(read_text(path).splitlines()) if ln.strip()]
    out, first = {}, {}
    for lineno, tok in numbered:
        if len(tok) != 2 or tok[1].strip() not in ("0", "1", "2"):
            raise DataError(f"{path}: line {lineno} should be '<file> <0|1|2>', got {' '.join(tok)!r}")
        name, p = tok[0].strip(), int(tok[1])
        _check_repeat(path, first, name, lineno, p)
        out[name] = p
    return out


def read_text(path):
    """The text of an annotation file: UTF-8 (a leading byte-order mark is allowed), a regular file
    of at most MAX_ANNOTATION_BYTES. A byte that is not UTF-8 is an error naming its line."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise DataError(f"{path}: not a regular file")
            if st.st_size > MAX_ANNOTATION_BYTES:
                raise DataError(f"{path}: {st.st_size / 2**20:.0f} MiB, over the "
                                f"{MAX_ANNOTATION_BYTES / 2**20:.0f} MiB limit for an annotation file")
            data = f.read(MAX_ANNOTATION_BYTES + 1)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: not a regular file (a folder)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_ANNOTATION_BYTES:
        raise DataError(f"{path}: grew over the {MAX_ANNOTATION_BYTES / 2**20:.0f} MiB limit while read")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text "
                        "(save the file as UTF-8)") from None


def read_annotations(source):
    """Parse and cross-check the attribute and partition files of a :class:`CelebASource`."""
    if source.attr_file.suffix.lower() == ".csv":
        filenames, names, values = parse_attr_csv(source.attr_file)
    else:
        filenames, names, values = parse_attr_txt(source.attr_file)
    part = parse_partition(source.partition_file)
    missing = [f for f in filenames if f not in part]
    extra = len(part) - (len(filenames) - len(missing))
    if missing or extra:
        raise DataError(f"{source.partition_file}: does not match {source.attr_file}: "
                        f"{len(missing)} attribute rows have no partition (e.g. {missing[:3]}), "
                        f"{extra} partition rows have no attributes")
    partition = np.array([part[f] for f in filenames], dtype=np.uint8)
    return Annotations(filenames, names, values, partition)


def select_attributes(names, wanted, where):
    """Column indexes of ``wanted`` in the header ``names``; an unknown name lists the valid ones."""
    unknown = [a for a in wanted if a not in names]
    if unknown:
        raise UsageError(f"{where}: unknown attribute(s) {unknown}; valid names: {', '.join(names)}")
    if len(set(wanted)) != len(wanted):
        raise UsageError(f"attributes asked for twice: {list(wanted)}")
    return [names.index(a) for a in wanted]


def open_reader(source):
    """A callable ``name -> bytes`` for the images of ``source`` (one zip handle per process).

    It raises :class:`ImageTooLarge` before reading a file over MAX_IMAGE_BYTES, or a zip member
    whose declared size is over it or whose compression ratio is over MAX_ZIP_RATIO (the bytes
    read are capped too, whatever the zip declares).
    """
    members = source.image_names()
    if source.is_zip:
        zf = zipfile.ZipFile(source.images)

        def read_member(name):
            info = members[name]
            _check_member(info)
            with zf.open(info) as f:
                return _read_capped(f, info.file_size)
        return read_member

    def read_file(name):
        with open(members[name], "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_IMAGE_BYTES:
                raise ImageTooLarge(f"{size:,} bytes, over the limit of {MAX_IMAGE_BYTES:,} for one image")
            return _read_capped(f, size)
    return read_file


def _check_member(info):
    if info.file_size > MAX_IMAGE_BYTES:
        raise ImageTooLarge(f"declared size {info.file_size:,} bytes is over the limit of {MAX_IMAGE_BYTES:,} "
                            "for one image (a guard against zip bombs)")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > (1 << 20) and ratio > MAX_ZIP_RATIO:
        raise ImageTooLarge(f"compression ratio {ratio:.0f}:1 is over the {MAX_ZIP_RATIO}:1 limit "
                            "(a guard against zip bombs)")


def _read_capped(f, expected):
    # read(n) allocates n bytes up front: ask for what the file says it holds (one more byte shows
    # whether it holds more), never for the cap itself
    data = f.read(min(expected, MAX_IMAGE_BYTES) + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageTooLarge(f"over the limit of {MAX_IMAGE_BYTES:,} bytes for one image")
    return data
