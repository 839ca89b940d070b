"""docs/configuration.md names every key the config file accepts: a key added to
`WorkerSettings` (``[worker]``), `DaemonConfig` (``[daemon]``) or `ArchiveConfig`
(``[[archive]]``) without a row in its table fails here."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from archivist.config import ArchiveConfig, DaemonConfig
from archivist.worker.settings import WorkerSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _documented_keys(section: str) -> set[str]:
    """The keys in the first column of the table under ``## `section` ``."""
    text = DOC.read_text()
    start = text.index(f"## `{section}`")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    return set(re.findall(r"^\| `([a-z_]+)` \|", body, flags=re.MULTILINE))


@pytest.mark.parametrize(
    ("section", "struct"),
    [("[worker]", WorkerSettings), ("[daemon]", DaemonConfig), ("[[archive]]", ArchiveConfig)],
)
def test_every_key_of_a_section_has_a_row_in_its_table(
    section: str, struct: type[msgspec.Struct]
) -> None:
    fields = set(struct.__struct_fields__)
    documented = _documented_keys(section)
    assert fields - documented == set(), f"undocumented {section} keys"
    assert documented - fields == set(), f"{section} rows for keys that do not exist"
