# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ggap/codec/_pure.py (the reference; the format is documented there).

Every public function must give the same bytes, values and CodecError messages as the pure
version; tests/unit/test_fastlog_equivalence.py checks that on generated inputs. Indexing is
unchecked (boundscheck/wraparound off), so every read below is preceded by an explicit
length check against `end`.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport Py_EQ, PyObject_RichCompareBool
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.string cimport memcpy
from zlib import crc32 as _crc32

from ggap.types.errors import CodecError

FORMAT_VERSION = 1
MAX_DEPTH = 64
ENTRY_HEADER_SIZE = 26

cdef enum:
    TAG_NONE = 0x00
    TAG_FALSE = 0x01
    TAG_TRUE = 0x02
    TAG_INT = 0x03
    TAG_BYTES = 0x04
    TAG_STR = 0x05
    TAG_LIST = 0x06
    C_FORMAT_VERSION = 1
    C_MAX_DEPTH = 64
    C_HEADER = 26

cdef object _U64_MAX = (1 << 64) - 1


# --- values ---------------------------------------------------------------------------

cdef struct _Buf:
    unsigned char* data
    Py_ssize_t length
    Py_ssize_t cap


cdef int _reserve(_Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.length + extra
    cdef Py_ssize_t cap
    cdef unsigned char* p
    if need <= b.cap:
        return 0
    cap = b.cap * 2
    if cap < need:
        cap = need
    p = <unsigned char*>PyMem_Realloc(b.data, <size_t>cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int _put_byte(_Buf* b, unsigned char c) except -1:
    if b.length >= b.cap:
        _reserve(b, 1)
    b.data[b.length] = c
    b.length += 1
    return 0


cdef int _put_varint(_Buf* b, unsigned long long u) except -1:
    _reserve(b, 10)
    while u >= 0x80:
        b.data[b.length] = <unsigned char>((u & 0x7F) | 0x80)
        b.length += 1
        u >>= 7
    b.data[b.length] = <unsigned char>u
    b.length += 1
    return 0


cdef int _put_raw(_Buf* b, const char* src, Py_ssize_t n) except -1:
    _reserve(b, n)
    if n:
        memcpy(b.data + b.length, src, <size_t>n)
    b.length += n
    return 0


cdef int _pack_into(_Buf* b, object obj, int depth) except -1:
    cdef int overflow = 0
    cdef long long v
    cdef unsigned long long u
    cdef const char* s
    cdef Py_ssize_t n
    cdef object items
    if obj is None:
        _put_byte(b, TAG_NONE)
    elif obj is True:
        _put_byte(b, TAG_TRUE)
    elif obj is False:
        _put_byte(b, TAG_FALSE)
    elif isinstance(obj, int):
        v = PyLong_AsLongLongAndOverflow(obj, &overflow)
        if overflow:
            raise CodecError("int out of signed 64-bit range")
        u = <unsigned long long>v
        _put_byte(b, TAG_INT)
        _put_varint(b, (u << 1) ^ (0ULL - (u >> 63)))
    elif isinstance(obj, bytes):
        n = PyBytes_GET_SIZE(obj)
        _put_byte(b, TAG_BYTES)
        _put_varint(b, <unsigned long long>n)
        _put_raw(b, PyBytes_AS_STRING(obj), n)
    elif isinstance(obj, str):
        try:
            s = PyUnicode_AsUTF8AndSize(obj, &n)
        except UnicodeEncodeError:
            raise CodecError("str cannot be encoded as UTF-8") from None
        _put_byte(b, TAG_STR)
        _put_varint(b, <unsigned long long>n)
        _put_raw(b, s, n)
    elif isinstance(obj, (list, tuple)):
        if depth >= C_MAX_DEPTH:
            raise CodecError(f"nesting deeper than {MAX_DEPTH}")
        # A subclass may iterate differently from its len(); freeze what we write.
        items = obj if type(obj) is list or type(obj) is tuple else tuple(obj)
        _put_byte(b, TAG_LIST)
        _put_varint(b, <unsigned long long>len(items))
        for item in items:
            _pack_into(b, item, depth + 1)
    else:
        raise CodecError(f"cannot pack value of type {type(obj).__name__}")
    return 0


def pack(obj):
    """Encode None/bool/int/bytes/str and nested list/tuple of them; CodecError otherwise."""
    cdef _Buf b
    b.data = <unsigned char*>PyMem_Malloc(64)
    if b.data == NULL:
        raise MemoryError()
    b.length = 0
    b.cap = 64
    try:
        _pack_into(&b, obj, 0)
        return PyBytes_FromStringAndSize(<char*>b.data, b.length)
    finally:
        PyMem_Free(b.data)


cdef bytes _as_bytes(object buf):
    if isinstance(buf, bytes):
        return <bytes>buf
    if isinstance(buf, (bytearray, memoryview)):
        return bytes(buf)
    raise CodecError(f"expected bytes, got {type(buf).__name__}")


cdef int _read_varint(const unsigned char* p, Py_ssize_t* pos, Py_ssize_t end,
                      unsigned long long* out) except -1:
    cdef Py_ssize_t start = pos[0]
    cdef Py_ssize_t i = start
    cdef unsigned long long result = 0
    cdef unsigned int shift = 0
    cdef unsigned char c
    cdef int k
    for k in range(10):
        if i >= end:
            raise CodecError(f"truncated varint at offset {start}")
        c = p[i]
        i += 1
        if k == 9 and c > 1:
            raise CodecError(f"over-long varint at offset {start}")
        result |= (<unsigned long long>(c & 0x7F)) << shift
        if c < 0x80:
            if c == 0 and k > 0:
                raise CodecError(f"non-canonical varint at offset {start}")
            pos[0] = i
            out[0] = result
            return 0
        shift += 7
    raise AssertionError("unreachable: the tenth byte always ends the varint")


cdef int _read_len(const unsigned char* p, Py_ssize_t* pos, Py_ssize_t end,
                   Py_ssize_t* out) except -1:
    cdef Py_ssize_t start = pos[0]
    cdef unsigned long long n
    cdef Py_ssize_t remaining
    _read_varint(p, pos, end, &n)
    remaining = end - pos[0]
    if n > <unsigned long long>remaining:
        raise CodecError(f"length {n} at offset {start} exceeds the {remaining} remaining bytes")
    out[0] = <Py_ssize_t>n
    return 0


cdef object _unpack_from(const unsigned char* p, Py_ssize_t* pos, Py_ssize_t end, int depth):
    cdef Py_ssize_t tag_pos = pos[0]
    cdef Py_ssize_t n, i, start
    cdef unsigned long long u
    cdef unsigned char tag
    cdef list items
    if tag_pos >= end:
        raise CodecError(f"truncated input at offset {tag_pos}")
    tag = p[tag_pos]
    pos[0] = tag_pos + 1
    if tag == TAG_NONE:
        return None
    if tag == TAG_FALSE:
        return False
    if tag == TAG_TRUE:
        return True
    if tag == TAG_INT:
        _read_varint(p, pos, end, &u)
        return <long long>((u >> 1) ^ (0ULL - (u & 1)))
    if tag == TAG_BYTES:
        _read_len(p, pos, end, &n)
        start = pos[0]
        pos[0] = start + n
        return PyBytes_FromStringAndSize(<const char*>(p + start), n)
    if tag == TAG_STR:
        _read_len(p, pos, end, &n)
        start = pos[0]
        try:
            s = PyUnicode_DecodeUTF8(<const char*>(p + start), n, NULL)
        except UnicodeDecodeError:
            raise CodecError(f"invalid UTF-8 in str at offset {start}") from None
        pos[0] = start + n
        return s
    if tag == TAG_LIST:
        if depth >= C_MAX_DEPTH:
            raise CodecError(f"nesting deeper than {MAX_DEPTH} at offset {tag_pos}")
        # Every item takes at least one byte, so the count is bounded by what is left.
        _read_len(p, pos, end, &n)
        items = []
        for i in range(n):
            items.append(_unpack_from(p, pos, end, depth + 1))
        return tuple(items)
    raise CodecError(f"unknown tag 0x{tag:02x} at offset {tag_pos}")


def unpack(buf):
    """Decode exactly one value filling all of `buf`; lists come back as tuples."""
    cdef bytes data = _as_bytes(buf)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0
    obj = _unpack_from(p, &pos, end, 0)
    if pos != end:
        raise CodecError(f"{end - pos} trailing bytes after value")
    return obj


# --- log entry frame ------------------------------------------------------------------

cdef inline void _put_be(unsigned char* p, unsigned long long v, int width) noexcept:
    cdef int i
    for i in range(width - 1, -1, -1):
        p[i] = <unsigned char>(v & 0xFF)
        v >>= 8


cdef inline unsigned long long _get_be(const unsigned char* p, int width) noexcept:
    cdef unsigned long long v = 0
    cdef int i
    for i in range(width):
        v = (v << 8) | p[i]
    return v


cdef unsigned long long _check_u64(str name, object v) except? 0:
    if not isinstance(v, int):
        raise CodecError(f"{name} must be an int, got {type(v).__name__}")
    if v < 0 or v > _U64_MAX:
        raise CodecError(f"{name} {v} out of unsigned 64-bit range")
    return <unsigned long long>v


def encode_entry(index, term, kind, payload):
    """Frame one log entry; the CRC lets recovery tell a torn or rotten write from data."""
    cdef unsigned long long c_index = _check_u64("index", index)
    cdef unsigned long long c_term = _check_u64("term", term)
    cdef Py_ssize_t plen
    cdef unsigned char* p
    cdef bytes out
    if not isinstance(kind, int):
        raise CodecError(f"kind must be an int, got {type(kind).__name__}")
    if kind < 0 or kind > 255:
        raise CodecError(f"kind {kind} out of range 0..255")
    if not isinstance(payload, bytes):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    plen = PyBytes_GET_SIZE(payload)
    if <unsigned long long>plen > 0xFFFFFFFFULL:
        raise CodecError(f"payload of {plen} bytes exceeds the 4 GiB entry limit")
    out = PyBytes_FromStringAndSize(NULL, C_HEADER + plen)
    p = <unsigned char*>PyBytes_AS_STRING(out)
    p[0] = C_FORMAT_VERSION
    p[1] = <unsigned char>(<int>kind)
    _put_be(p + 2, c_index, 8)
    _put_be(p + 10, c_term, 8)
    _put_be(p + 18, <unsigned long long>plen, 4)
    if plen:
        memcpy(p + C_HEADER, PyBytes_AS_STRING(payload), <size_t>plen)
    crc = _crc32(payload, _crc32(PyBytes_FromStringAndSize(<char*>p, 22)))
    _put_be(p + 22, <unsigned long long>crc, 4)
    return out


def decode_entry(buf):
    """Return (index, term, kind, payload) of one frame; CodecError unless it is exactly valid."""
    cdef bytes data = _as_bytes(buf)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t avail
    cdef unsigned long long plen, stored
    if n < C_HEADER:
        raise CodecError(f"truncated entry: {n} bytes, header needs {ENTRY_HEADER_SIZE}")
    if p[0] != C_FORMAT_VERSION:
        raise CodecError(f"unknown entry format version {p[0]}")
    plen = _get_be(p + 18, 4)
    avail = n - C_HEADER
    if <unsigned long long>avail < plen:
        raise CodecError(f"truncated entry: payload needs {plen} bytes, {avail} present")
    if <unsigned long long>avail > plen:
        raise CodecError(f"{avail - <Py_ssize_t>plen} trailing bytes after entry payload")
    stored = _get_be(p + 22, 4)
    payload = PyBytes_FromStringAndSize(<const char*>(p + C_HEADER), avail)
    computed = _crc32(payload, _crc32(PyBytes_FromStringAndSize(<const char*>p, 22)))
    if stored != computed:
        raise CodecError(f"crc mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")
    return _get_be(p + 2, 8), _get_be(p + 10, 8), <int>p[1], payload


# --- MVCC helpers ---------------------------------------------------------------------

def visible_versions(rows, limit):
    """Pick each key's newest version from rows sorted (key asc, mod_revision desc).

    Rows are tuples (key, mod_revision, create_revision, version, expires_at_ms, tombstone,
    value, ...); a key whose newest row is a tombstone is absent. Returns the first `limit`
    survivors (all if limit <= 0), as the same tuple objects, and how many survived in total.
    """
    cdef list out = []
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t cap
    cdef bint have_prev = False
    cdef object prev = None
    cdef object key
    cdef tuple trow
    if not isinstance(limit, int):
        raise CodecError(f"limit must be an int, got {type(limit).__name__}")
    # Past every possible count a limit is the same as none; keeps the compare in C.
    if limit <= 0 or limit > 0x7FFFFFFFFFFF:
        cap = -1
    else:
        cap = <Py_ssize_t>limit
    for row in rows:
        if not isinstance(row, tuple):
            raise CodecError(f"row must be a tuple, got {type(row).__name__}")
        trow = <tuple>row
        if len(trow) < 7:
            raise CodecError(f"row has {len(trow)} fields, needs at least 7")
        key = trow[0]
        if have_prev and (key is prev or PyObject_RichCompareBool(key, prev, Py_EQ)):
            continue
        have_prev = True
        prev = key
        if trow[5]:
            continue
        count += 1
        if cap < 0 or count <= cap:
            out.append(trow)
    return out, count


def version_at(revisions, revision):
    """Position of the greatest element <= revision in an ascending sequence, else -1."""
    cdef Py_ssize_t lo = 0
    cdef Py_ssize_t hi
    cdef Py_ssize_t mid
    cdef long long target, cv
    cdef int overflow = 0
    cdef int voverflow = 0
    cdef bint fast
    if not isinstance(revision, int):
        raise CodecError(f"revision must be an int, got {type(revision).__name__}")
    target = PyLong_AsLongLongAndOverflow(revision, &overflow)
    hi = len(revisions)
    while lo < hi:
        mid = (lo + hi) >> 1
        v = revisions[mid]
        if not isinstance(v, int):
            raise CodecError(f"revisions[{mid}] must be an int, got {type(v).__name__}")
        fast = False
        if not overflow:
            cv = PyLong_AsLongLongAndOverflow(v, &voverflow)
            fast = not voverflow
        if fast:
            if cv <= target:
                lo = mid + 1
            else:
                hi = mid
        elif v <= revision:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1
