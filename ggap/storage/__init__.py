"""SQLite storage: kv.db (MVCC state, KvStore/KvReader) and raft.db (log, LogStore).

See ggap/storage/kv.py and log.py for the durability reasoning of each file.
"""

from ggap.storage._schema import KV_DB_NAME, KV_SCHEMA_VERSION, LOG_DB_NAME, LOG_SCHEMA_VERSION
from ggap.storage._sqlite import DbSpace, db_space, dir_size
from ggap.storage.inspect import inspect_data_dir
from ggap.storage.kv import Applied, KvReader, KvStore
from ggap.storage.log import CacheInfo, LogStore

__all__ = [
    "KV_DB_NAME",
    "KV_SCHEMA_VERSION",
    "LOG_DB_NAME",
    "LOG_SCHEMA_VERSION",
    "Applied",
    "CacheInfo",
    "DbSpace",
    "KvReader",
    "KvStore",
    "LogStore",
    "db_space",
    "dir_size",
    "inspect_data_dir",
]
