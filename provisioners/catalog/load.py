"""Reading a catalog: file -> YAML node tree -> schema -> cross-field checks -> :class:`Catalog`
(the three passes are described in :mod:`provisioners.catalog`)."""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from provisioners.catalog.checks import cross_checks, secret_keys
from provisioners.catalog.errors import CatalogIssue, all_issues, single_issue
from provisioners.catalog.model import Catalog
from provisioners.catalog.schema_issues import merge_typos, schema_issues
from provisioners.catalog.yamlpos import (duplicate_keys, load_yaml, non_text_keys, offset_position,
                                          yaml11_booleans)

#: The catalog the tool uses when none is named: ``<repo root>/infrastructure-catalog.yml``.
DEFAULT_CATALOG = Path(__file__).resolve().parents[2] / "infrastructure-catalog.yml"

_TOP_LEVEL = "a mapping with version, proxmox, network, images and vms"
#: Bytes; a catalog is a few KiB.
MAX_CATALOG_BYTES = 1024 ** 2


def default_catalog_path() -> Path:
    """The catalog to use when none is named: ``$CATALOG`` when set and non-empty (as
    ``make ... CATALOG=PATH`` passes it), else :data:`DEFAULT_CATALOG`."""
    return Path(os.environ.get("CATALOG") or DEFAULT_CATALOG)


def load_catalog(path: str | os.PathLike[str] | None = None, *, check_files: bool = True) -> Catalog:
    """Read, validate and return the catalog at ``path`` (default :data:`DEFAULT_CATALOG`).

    ``check_files=False`` skips the checks of referenced files (SSH keys, CA bundle), e.g. for
    ``plan`` on a machine that does not hold them.

    Raises:
        CatalogError: the file cannot be read, is not valid YAML, or fails any check; ``.issues``
            lists every problem found with its YAML line:column.
    """
    file = Path(path if path is not None else DEFAULT_CATALOG).expanduser()
    file = Path(os.path.abspath(file))
    try:
        with file.open("rb") as fh:
            # Bounded: /dev/zero or a mistyped path to a disk image must not eat the memory.
            raw = fh.read(MAX_CATALOG_BYTES + 1)
        if len(raw) > MAX_CATALOG_BYTES:
            raise single_issue(file, "", 0, 0, f"is larger than {MAX_CATALOG_BYTES // 1024 ** 2} MiB; not a catalog",
                               "a YAML catalog of a few KiB", "check the path") from None
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line, col = offset_position(raw, err.start)
        raise single_issue(file, "", line, col, f"byte 0x{raw[err.start]:02x} is not UTF-8 text",
                           "a UTF-8 text file",
                           "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`); a binary file is no "
                           "catalog") from None
    except FileNotFoundError:
        raise single_issue(file, "", 0, 0, "catalog file not found",
                           fix="check the path, or name another catalog (CATALOG=PATH / -D catalog=PATH)") from None
    except IsADirectoryError:
        raise single_issue(file, "", 0, 0, "is a directory, not a catalog file") from None
    except PermissionError:
        raise single_issue(file, "", 0, 0, "cannot read the catalog: permission denied",
                           fix="make it readable by this user (chmod/chown)") from None
    except OSError as err:
        raise single_issue(file, "", 0, 0, f"cannot read the catalog: {err.strerror or err}") from None
    return parse_catalog(text, file=file, check_files=check_files)


def _tree_issues(root: yaml.MappingNode) -> list[CatalogIssue]:
    return duplicate_keys(root) + secret_keys(root) + yaml11_booleans(root) + non_text_keys(root)


def parse_catalog(text: str, *, file: Path | None = None, check_files: bool = True) -> Catalog:
    """Like :func:`load_catalog` for catalog text; relative paths resolve against ``file``'s
    directory (the working directory when ``file`` is None).

    Raises:
        CatalogError: as :func:`load_catalog`.
    """
    root, data, issues = load_yaml(text, file, _tree_issues)
    if root is None or data is None:
        raise single_issue(file, "", 1, 1, "the catalog is empty", expected=_TOP_LEVEL)
    if not isinstance(root, yaml.MappingNode):
        raise single_issue(file, "", root.start_mark.line + 1, root.start_mark.column + 1,
                           "the catalog is not a mapping", expected=_TOP_LEVEL)

    secret_paths = {i.path for i in issues if "looks like a secret" in i.message}
    base_dir = file.parent if file is not None else Path.cwd()
    catalog = None
    try:
        catalog = Catalog.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        issues += schema_issues(err.errors(), root, secret_paths)

    issues = merge_typos(issues)
    if catalog is not None and not issues:
        issues += cross_checks(catalog, root, check_files)
    if issues:
        issues.sort(key=lambda i: (i.line, i.col))
        raise all_issues(file, issues)
    catalog._path = file
    return catalog
