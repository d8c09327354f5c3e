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
"""
import csv
import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

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
SYNTHETIC_MARKER = "SYNTHETIC_NOT_CELEBA.txt"  # written by synthesize(); makes prepare() flag the file


@dataclass
class Annotations:
    """Parsed annotation files. ``values`` is int8 (N, 40) in {-1, 1}; ``partition`` uint8 (N,)."""
    filenames: list
    names: list
    values: np.ndarray
    partition: np.ndarray


@dataclass
class CelebASource:
    """One CelebA root on disk, its layout detected. Open images with :meth:`read_bytes`."""
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
        """{file name: folder path or zip member name} of every image found."""
        if self.is_zip:
            if self._zip_members is None:
                try:
                    with zipfile.ZipFile(self.images) as zf:
                        members = [i.filename for i in zf.infolist() if not i.is_dir()]
                except (zipfile.BadZipFile, OSError) as exc:
                    raise DataError(f"{self.images}: cannot read the zip file ({exc})") from exc
                self._zip_members = {os.path.basename(m): m for m in members
                                     if m.lower().endswith(IMAGE_SUFFIXES)}
            return self._zip_members
        with os.scandir(self.images) as it:
            return {e.name: e.path for e in it
                    if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()}

    def describe_image(self, name):
        """A path a user can find, for messages: ``folder/000001.jpg`` or ``file.zip:member``."""
        if self.is_zip:
            return f"{self.images}:{self.image_names().get(name, name)}"
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
            with zipfile.ZipFile(self.images) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    h.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
        else:
            with os.scandir(self.images) as it:
                entries = sorted((e.name, e.stat()) for e in it if e.is_file())
            for name, st in entries:
                h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


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
    synthetic = any((p / SYNTHETIC_MARKER).exists() for p in {attr.parent, root})
    return CelebASource(Path(root), layout, attr, part, images, synthetic)


def parse_attr_txt(path):
    """Official ``list_attr_celeba.txt`` -> (filenames, names, int8 values (N, K)). Strict."""
    path = Path(path)
    lines = _read_lines(path)
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
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty attribute file") from None
        if not header or header[0].strip() != "image_id":
            raise DataError(f"{path}: first column should be 'image_id', got {header[:1]}")
        names = [h.strip() for h in header[1:]]
        _check_names(path, names)
        rows = [(i + 2, [c.strip() for c in r]) for i, r in enumerate(reader) if r]
    return _rows_to_arrays(path, names, rows)


def _rows_to_arrays(path, names, rows):
    k = len(names)
    filenames, values = [], np.empty((len(rows), k), dtype=np.int8)
    for j, (lineno, tok) in enumerate(rows):
        if len(tok) != k + 1:
            raise DataError(f"{path}: line {lineno} has {len(tok) - 1} values, expected {k} "
                            "(truncated or malformed file?)")
        filenames.append(tok[0])
        try:
            v = [int(t) for t in tok[1:]]
        except ValueError:
            raise DataError(f"{path}: line {lineno}: values must be -1 or 1, got {tok[1:6]}...") from None
        if any(x not in (-1, 1) for x in v):
            raise DataError(f"{path}: line {lineno}: values must be -1 or 1, got {sorted(set(v))}")
        values[j] = v
    if len(set(filenames)) != len(filenames):
        raise DataError(f"{path}: duplicate file names")
    return filenames, names, values


def _check_names(path, names):
    if not names:
        raise DataError(f"{path}: missing attribute header")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate attribute names in the header")


def parse_partition(path):
    """``list_eval_partition.txt`` (``name p``, no header) or ``.csv`` (``image_id,partition``)
    -> {file name: 0|1|2}."""
    path = Path(path)
    out = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r]
        if not rows or [c.strip() for c in rows[0]] != ["image_id", "partition"]:
            raise DataError(f"{path}: header should be 'image_id,partition'")
        numbered = [(i + 2, r) for i, r in enumerate(rows[1:])]
    else:
        numbered = [(i + 1, ln.split()) for i, ln in enumerate(_read_lines(path)) if ln.strip()]
    for lineno, tok in numbered:
        if len(tok) != 2 or tok[1].strip() not in ("0", "1", "2"):
            raise DataError(f"{path}: line {lineno} should be '<file> <0|1|2>', got {' '.join(tok)!r}")
        out[tok[0].strip()] = int(tok[1])
    return out


def _read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None


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
        raise DataError(f"{where}: unknown attribute(s) {unknown}; valid names: {', '.join(names)}")
    if len(set(wanted)) != len(wanted):
        raise DataError(f"attributes asked for twice: {list(wanted)}")
    return [names.index(a) for a in wanted]


def open_reader(source):
    """A callable ``name -> bytes`` for the images of ``source`` (one zip handle per process)."""
    members = source.image_names()
    if source.is_zip:
        zf = zipfile.ZipFile(source.images)
        return lambda name: zf.read(members[name])
    return lambda name: Path(members[name]).read_bytes()
