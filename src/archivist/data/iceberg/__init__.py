"""The cold tier: Apache Iceberg tables as archive handles (``iceberg+sqlite://`` and
``iceberg+postgresql://`` URLs): one table per collection in a pyiceberg SQL catalog, data
files through pyarrow's file systems. docs/coldtier.md describes it.
"""

from archivist.data.iceberg.url import LakeURL, is_lake_url

__all__ = ["LakeURL", "is_lake_url"]
